{#-
    Incremental, not a view: deduplication needs the events of earlier intervals, and raw holds
    only lines. Each run deletes its interval (pre-hook) and appends it again, so a rerun of an
    hour replaces exactly that hour. full_refresh is off because the model only ever computes one
    interval: a full refresh would throw away every other hour.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='fail',
        full_refresh=false,
        pre_hook="{{ delete_interval() }}",
    )
}}

with

event_lines as (

    select * from {{ ref('stg_landing__event_lines') }}

),

valid_events as (

    select
        event_id,
        event_at,
        user_id,
        event_type,
        item_id,
        query_text,
        value,
        target_user_id,
        interval_start,
        source_file,
        line_number

    from event_lines
    where rejection_reason is null

),

first_delivery_in_interval as (

    -- The interval may span several arrival hours (a day of backfill): the earliest hour's
    -- copy is the first delivery, exactly as when the hours are built one by one.
    select * from valid_events
    qualify row_number() over (
        partition by event_id
        order by interval_start, source_file, line_number
    ) = 1

),

final as (

    select * from first_delivery_in_interval as this_interval

    {% if is_incremental() %}
        -- A re-delivered event that an earlier hour already recorded keeps its first recording.
        where not exists (
            select 1
            from {{ this }} as earlier
            where
                earlier.event_id = this_interval.event_id
                and earlier.interval_start < this_interval.interval_start
        )
    {% endif %}

)

select * from final
