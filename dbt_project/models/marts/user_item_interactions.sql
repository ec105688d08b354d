{#-
    Incremental, not a table: it accumulates every hour's weighted events while each run only
    computes its own hour. The pre-hook deletes the interval before appending it, so a rerun
    replaces exactly that hour; full_refresh is off because a full refresh would keep only the
    current hour.
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

weighted_events as (

    select * from {{ ref('int_events_weighted') }}

),

final as (

    select
        event_id,
        user_id,
        event_type,
        item_id,
        query_text,
        target_user_id,
        value,
        event_at,
        weight,
        interval_start

    from weighted_events

)

select * from final
