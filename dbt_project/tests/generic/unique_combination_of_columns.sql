{#- A composite key: no two rows share the same values in all of `combination_of_columns`. -#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

with

final as (

    select
        {% for column in combination_of_columns -%}
        {{ column }},
        {% endfor -%}
        count(*) as n_records

    from {{ model }}
    group by all
    having count(*) > 1

)

select * from final

{% endtest %}
