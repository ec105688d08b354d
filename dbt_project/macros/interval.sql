{#-
    The run's interval. Two ways in, one meaning:

    - `--vars '{"interval_start": ..., "interval_end": ...}'` (tests, manual runs): the values
      become TIMESTAMP literals, and the on-run-start hook record_run_interval() writes them to
      raw.dbt_run_interval.
    - no `--vars` (the hourly task, interest_pipeline.transform): the caller writes the interval
      to raw.dbt_run_interval first and the SQL reads it from there. Changing `--vars` makes dbt
      re-parse the whole project (about 5 s); a table keeps partial parsing effective.

    The data tests' `where:` configs (which cannot call macros) read raw.dbt_run_interval, so
    they see the same interval either way. A var must be UTC: 'YYYY-MM-DD HH:MM:SS' (an ISO 'T'
    and a zero offset, 'Z' or '+00:00', are accepted too). Any other offset is refused rather
    than silently ignored, because DuckDB's cast to TIMESTAMP drops offsets.
-#}
{% macro interval_literal(var_name) -%}
    {%- set value = var(var_name, none) -%}
    {%- if value is none -%}
        (select {{ var_name }} from {{ run_interval_relation() }})
    {%- else -%}
        {%- set value = value | string -%}
        {%- set utc_pattern = '[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}'
            ~ '([.][0-9]+)?(Z|[+]00:00)?' -%}
        {%- if not modules.re.fullmatch(utc_pattern, value) -%}
            {{ exceptions.raise_compiler_error(
                "var '" ~ var_name ~ "' must be a UTC timestamp 'YYYY-MM-DD HH:MM:SS', "
                ~ "got '" ~ value ~ "'"
            ) }}
        {%- endif -%}
        cast('{{ value }}' as timestamp)
    {%- endif -%}
{%- endmacro %}


{#- The one-row table holding the interval being built (see interval_literal). -#}
{% macro run_interval_relation() -%}
    raw.dbt_run_interval
{%- endmacro %}


{#-
    on-run-start hook: with `--vars`, record the interval in raw.dbt_run_interval so the data
    tests' `where:` configs see it; without, the caller has written it already.
-#}
{% macro record_run_interval() -%}
    {%- if var('interval_start', none) is not none -%}
        create schema if not exists raw;
        create or replace table {{ run_interval_relation() }} as
        select
            {{ interval_literal('interval_start') }} as interval_start,
            {{ interval_literal('interval_end') }} as interval_end
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}


{% macro interval_start_literal() -%}
    {{ interval_literal('interval_start') }}
{%- endmacro %}


{% macro interval_end_literal() -%}
    {{ interval_literal('interval_end') }}
{%- endmacro %}


{#-
    The rows of the run's interval [interval_start, interval_end): one hour for the hourly DAG,
    a whole day for the daily backfill DAG. Rows keep the arrival hour they landed in, so a day
    built at once equals its 24 hours built one by one.
-#}
{% macro in_run_interval(interval_column='interval_start') -%}
    {{ interval_column }} >= {{ interval_start_literal() }}
    and {{ interval_column }} < {{ interval_end_literal() }}
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
        where {{ in_run_interval(interval_column) }}
    {%- endif -%}
{%- endmacro %}
