{#-
    The ingest task and dbt must agree on the interval: every landed line the run reads must
    lie, with its whole arrival hour [interval_start, interval_end), inside the run's interval
    (an hour, or a day of backfill). A mismatch means the run was given the wrong interval.
-#}
with

event_lines as (

    select * from {{ ref('stg_landing__event_lines') }}

),

item_lines as (

    select * from {{ ref('stg_landing__item_lines') }}

),

landed_intervals as (

    select distinct
        interval_start,
        interval_end
    from event_lines
    union
    select distinct
        interval_start,
        interval_end
    from item_lines

),

final as (

    select * from landed_intervals
    where interval_end > {{ interval_end_literal() }} or interval_end <= interval_start

)

select * from final
