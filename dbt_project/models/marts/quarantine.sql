{#-
    Incremental, not a table: it accumulates every hour's rejected lines while each run only
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

event_lines as (

    select * from {{ ref('stg_landing__event_lines') }}

),

item_lines as (

    select * from {{ ref('stg_landing__item_lines') }}

),

rejected_event_lines as (

    select
        interval_start,
        interval_end,
        'events' as source_kind,
        source_file,
        line_number,
        line as raw_line,
        rejection_reason as reason

    from event_lines
    where rejection_reason is not null

),

rejected_item_lines as (

    select
        interval_start,
        interval_end,
        'items' as source_kind,
        source_file,
        line_number,
        line as raw_line,
        rejection_reason as reason

    from item_lines
    where rejection_reason is not null

),

final as (

    select * from rejected_event_lines
    union all
    select * from rejected_item_lines

)

select * from final
