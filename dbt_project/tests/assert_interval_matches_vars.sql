{#-
    The ingest task and dbt must agree on the hour: every landed line of interval_start must
    carry the run's interval_end. A mismatch means the run was given the wrong interval.
-#}
with

event_lines as (

    select * from {{ ref('stg_landing__event_lines') }}

),

item_lines as (

    select * from {{ ref('stg_landing__item_lines') }}

),

landed_intervals as (

    select distinct interval_start, interval_end from event_lines
    union
    select distinct interval_start, interval_end from item_lines

),

final as (

    select * from landed_intervals
    where interval_end <> {{ interval_end_literal() }}

)

select * from final
