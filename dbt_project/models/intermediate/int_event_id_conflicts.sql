{#-
    A table, not a view: it joins the interval's lines with every recorded event, and the
    quarantine model and this model's tests all read it; as a view each of them would repeat
    that scan of the whole history.
-#}
{{ config(materialized='table') }}

-- Valid lines of the run's interval that repeat a recorded event_id with different content.
-- A re-delivery with the same content is a duplicate (counted in pipeline_runs.duplicates); a
-- line that reuses an id for another event cannot be told apart from the first, so it is
-- quarantined with the first copy named, never silently dropped.
with

event_lines as (

    select * from {{ ref('stg_landing__event_lines') }}
    where rejection_reason is null

),

recorded as (

    -- Every event kept so far, this interval's included (stg_landing__events is built first).
    select * from {{ ref('stg_landing__events') }}

),

conflicts as (

    select
        event_line.interval_start,
        event_line.interval_end,
        event_line.source_file,
        event_line.line_number,
        event_line.line,
        event_line.event_id,
        'event_id ' || event_line.event_id || ' repeats ' || first_copy.source_file
        || ' line ' || first_copy.line_number || ' with different content' as reason

    from event_lines as event_line
    inner join recorded as first_copy
        on event_line.event_id = first_copy.event_id
    where
        -- not the first copy itself
        (event_line.interval_start, event_line.source_file, event_line.line_number)
        <> (first_copy.interval_start, first_copy.source_file, first_copy.line_number)
        and (
            event_line.event_at, event_line.user_id, event_line.event_type, event_line.item_id,
            event_line.query_text, event_line.value, event_line.target_user_id
        ) is distinct from (
            first_copy.event_at, first_copy.user_id, first_copy.event_type, first_copy.item_id,
            first_copy.query_text, first_copy.value, first_copy.target_user_id
        )

),

final as (

    select * from conflicts

)

select * from final
