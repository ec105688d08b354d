{#-
    `relationships` between two per-interval incremental models without scanning every hour of
    the parent each run: every key of the current interval (the run's [interval_start,
    interval_end)) in `model` occurs in the same interval of `to`.
-#}
{% test relationships_in_interval(
    model, column_name, to, field, interval_column='interval_start'
) %}

with

child as (

    select {{ column_name }} as from_field
    from {{ model }}
    where {{ in_run_interval(interval_column) }} and {{ column_name }} is not null

),

parent as (

    select {{ field }} as to_field
    from {{ to }}
    where {{ in_run_interval(interval_column) }}

),

final as (

    select child.from_field
    from child
    left join parent on child.from_field = parent.to_field
    where parent.to_field is null

)

select * from final

{% endtest %}
