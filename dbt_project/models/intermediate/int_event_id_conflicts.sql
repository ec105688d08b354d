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
        line.interval_start,
        line.interval_end,
        line.source_file,
        line.line_number,
        line.line,
        line.event_id,
        'event_id ' || line.event_id || ' repeats ' || first_copy.source_file
        || ' line ' || first_copy.line_number || ' with different content' as reason

    from event_lines as line
    inner join recorded as first_copy
        on line.event_id = first_copy.event_id
    where
        -- not the first copy itself
        (line.interval_start, line.source_file, line.line_number)
        <> (first_copy.interval_start, first_copy.source_file, first_copy.line_number)
        and (
            line.event_at, line.user_id, line.event_type, line.item_id, line.query_text,
            line.value, line.target_user_id
        ) is distinct from (
            first_copy.event_at, first_copy.user_id, first_copy.event_type, first_copy.item_id,
            first_copy.query_text, first_copy.value, first_copy.target_user_id
        )

),

final as (

    select * from conflicts

)

select * from final
