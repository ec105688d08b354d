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

event_id_conflicts as (

    select * from {{ ref('int_event_id_conflicts') }}

),

landed_files as (

    select * from {{ ref('stg_landing__files') }}

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

conflicting_event_lines as (

    select
        interval_start,
        interval_end,
        'events' as source_kind,
        source_file,
        line_number,
        line as raw_line,
        reason

    from event_id_conflicts

),

damaged_files as (

    -- A file-level row: line_number 0 and no raw line stand for the file as a whole.
    select
        interval_start,
        interval_end,
        source_kind,
        source_file,
        0 as line_number,
        cast(null as varchar) as raw_line,
        read_problem as reason

    from landed_files
    where read_problem is not null

),

final as (

    select * from rejected_event_lines
    union all
    select * from rejected_item_lines
    union all
    select * from conflicting_event_lines
    union all
    select * from damaged_files

)

select * from final
