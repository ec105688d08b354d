{#-
    `unique` for a per-interval incremental model without scanning every row of history each
    hour: the keys of the current interval (the run's [interval_start, interval_end)) must each
    occur once in the whole table, i.e. neither twice in this interval nor already in another hour.
-#}
{% test unique_across_intervals(model, column_name, interval_column='interval_start') %}

with

current_interval_keys as (

    select distinct {{ column_name }} as unique_field
    from {{ model }}
    where {{ in_run_interval(interval_column) }}

),

key_rows as (

    select {{ column_name }} as unique_field
    from {{ model }}
    where {{ column_name }} in (select unique_field from current_interval_keys)

),

final as (

    select
        unique_field,
        count(*) as n_records

    from key_rows
    group by unique_field
    having count(*) > 1

)

select * from final

{% endtest %}
