{#-
    The event vocabulary of the landing contract (shared/pipeline-contract.md). The seed
    event_weights holds one row per known type; its accepted_values test keeps the two in step.
-#}
{% macro known_event_types() -%}
    {{ return([
        'view', 'search', 'click', 'add_to_cart', 'purchase', 'rate', 'tag', 'follow', 'unfollow'
    ]) }}
{%- endmacro %}


{#- Event types that are about one item and therefore need an item_id. -#}
{% macro item_event_types() -%}
    {{ return(['view', 'click', 'add_to_cart', 'purchase', 'rate', 'tag']) }}
{%- endmacro %}


{#- A Python list of strings as a SQL list literal: ('a', 'b'). -#}
{% macro sql_string_list(values) -%}
    ({%- for value in values -%}'{{ value }}'{{ ', ' if not loop.last }}{%- endfor -%})
{%- endmacro %}
