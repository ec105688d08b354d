{#-
    Plausibility limits for event_time, from the environment so one deployment sets them once:

    - INTEREST_MAX_EVENT_SKEW_HOURS (default 1): an event may not be dated more than this after
      the end of its arrival hour. A clock in the year 2999 would otherwise stay the "most
      recent" event for ever (popularity, last_event_at).
    - INTEREST_MIN_EVENT_TIME (default 1990-01-01, UTC): nothing happened on the site before
      it; catches epoch 0 and seconds sent where milliseconds are expected.
-#}
{% macro max_event_skew_hours() -%}
    {%- set value = env_var('INTEREST_MAX_EVENT_SKEW_HOURS', '1') -%}
    {%- if not modules.re.fullmatch('[0-9]+([.][0-9]+)?', value) -%}
        {{ exceptions.raise_compiler_error(
            "INTEREST_MAX_EVENT_SKEW_HOURS must be a number of hours >= 0, got '" ~ value ~ "'"
        ) }}
    {%- endif -%}
    {{ return(value) }}
{%- endmacro %}


{% macro min_event_time() -%}
    {%- set value = env_var('INTEREST_MIN_EVENT_TIME', '1990-01-01') -%}
    {%- set date_pattern = '[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}:[0-9]{2})?' -%}
    {%- if not modules.re.fullmatch(date_pattern, value) -%}
        {{ exceptions.raise_compiler_error(
            "INTEREST_MIN_EVENT_TIME must be a UTC date or 'YYYY-MM-DD HH:MM:SS', got '"
            ~ value ~ "'"
        ) }}
    {%- endif -%}
    {{ return(value) }}
{%- endmacro %}
