{#-
    The run's interval from --vars as a naive UTC TIMESTAMP literal. The var must be UTC:
    'YYYY-MM-DD HH:MM:SS' (an ISO 'T' and a zero offset, 'Z' or '+00:00', are accepted too).
    Any other offset is refused rather than silently ignored, because DuckDB's cast to TIMESTAMP
    drops offsets, and the data tests' `where:` configs (which cannot call macros) compare
    interval_start with the plain var string.
-#}
{% macro interval_literal(var_name) -%}
    {%- set value = var(var_name) | string -%}
    {%- set utc_pattern = '[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}'
        ~ '([.][0-9]+)?(Z|[+]00:00)?' -%}
    {%- if not modules.re.fullmatch(utc_pattern, value) -%}
        {{ exceptions.raise_compiler_error(
            "var '" ~ var_name ~ "' must be a UTC timestamp 'YYYY-MM-DD HH:MM:SS', "
            ~ "got '" ~ value ~ "'"
        ) }}
    {%- endif -%}
    cast('{{ value }}' as timestamp)
{%- endmacro %}


{% macro interval_start_literal() -%}
    {{ interval_literal('interval_start') }}
{%- endmacro %}


{% macro interval_end_literal() -%}
    {{ interval_literal('interval_end') }}
{%- endmacro %}


{#-
    Pre-hook of the per-interval incremental models: remove the interval's rows before the model
    appends them again, so a rerun replaces exactly that interval (also when the rerun yields no
    rows, which dbt's delete+insert strategy would not clean up). It runs in the model's
    transaction, so readers see the old or the new interval, never neither.
-#}
{% macro delete_interval(interval_column='interval_start') -%}
    {%- if is_incremental() -%}
        delete from {{ this }}
        where {{ interval_column }} = {{ interval_start_literal() }}
    {%- endif -%}
{%- endmacro %}
