{#-
    Helpers for parsing landed JSON lines. Each takes SQL expressions and returns one SQL
    expression, so the event and item models share one definition of each rule.
-#}

{#- The line without surrounding whitespace, CR (CRLF files) or a UTF-8 byte order mark. -#}
{% macro trim_line(line) -%}
    trim({{ line }}, ' ' || chr(9) || chr(10) || chr(13) || chr(65279))
{%- endmacro %}


{#-
    The reason a trimmed line is not a JSON object, or NULL when it is one. `line_json` is
    try_cast(trimmed_line as json): NULL exactly when the text is not valid JSON.
-#}
{% macro json_object_problem(trimmed_line, line_json) -%}
    case
        when coalesce({{ trimmed_line }}, '') = '' then 'empty line'
        when {{ line_json }} is null then 'not valid JSON'
        when json_type({{ line_json }}) <> 'OBJECT' then 'not a JSON object'
    end
{%- endmacro %}


{#- A field counts as missing when absent, JSON null, or an empty / whitespace-only string. -#}
{% macro is_missing(text) -%}
    (coalesce(trim({{ text }}), '') = '')
{%- endmacro %}


{#- True when a JSON field is present with a non-null value (of any type). -#}
{% macro is_present(json_kind) -%}
    (coalesce({{ json_kind }}, 'NULL') <> 'NULL')
{%- endmacro %}


{#-
    A JSON field as DOUBLE: a JSON number, or a string holding a plain decimal number; NULL for
    anything else, including NaN and infinities. `json_kind` is json_type(json, path) and
    `json_text` is json_extract_string(json, path).
-#}
{% macro parse_number(json_kind, json_text) -%}
    case
        when {{ json_kind }} in ('UBIGINT', 'BIGINT', 'DOUBLE')
            or (
                {{ json_kind }} = 'VARCHAR'
                and regexp_full_match(
                    trim({{ json_text }}),
                    '[-+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][-+]?[0-9]+)?'
                )
            )
            then (
                case
                    when isfinite(try_cast(trim({{ json_text }}) as double))
                        then try_cast(trim({{ json_text }}) as double)
                end
            )
    end
{%- endmacro %}


{#-
    A JSON field as a naive UTC TIMESTAMP, or NULL when unparsable:
    - a JSON number or a string of digits is epoch milliseconds;
    - any other string must be RFC 3339 with an explicit offset (Z or +-HH:MM); 'T', 't' or a
      space separates date and time (RFC 3339 section 5.6 allows all three).
    Out-of-range values (month 13, an epoch beyond the TIMESTAMP range) give NULL, never an error.
-#}
{% macro parse_utc_timestamp(json_kind, json_text) -%}
    case
        when {{ json_kind }} in ('UBIGINT', 'BIGINT', 'DOUBLE')
            or (
                {{ json_kind }} = 'VARCHAR'
                and regexp_full_match(trim({{ json_text }}), '[0-9]+')
            )
            then try(
                make_timestamp(cast(cast(trim({{ json_text }}) as double) * 1000 as bigint))
            )
        when {{ json_kind }} = 'VARCHAR'
            and regexp_full_match(
                trim({{ json_text }}),
                '[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})'
            )
            then timezone('UTC', try_cast(upper(trim({{ json_text }})) as timestamptz))
    end
{%- endmacro %}


{#-
    True when a JSON field is absent, null, a string or a number: anything an id can be. An
    object, array or boolean id (e.g. {"id": 1}) would otherwise be stored as its JSON text.
-#}
{% macro is_scalar_id(json_kind) -%}
    (coalesce({{ json_kind }}, 'NULL') in ('NULL', 'VARCHAR', 'BIGINT', 'UBIGINT', 'DOUBLE'))
{%- endmacro %}


{#-
    The most words of a text that are kept (INTEREST_MAX_TEXT_WORDS, default 256). The default
    model reads at most 256 word pieces and every word is at least one piece, so nothing the
    model would read is cut; a longer text costs storage and tokenising for nothing.
-#}
{% macro max_text_words() -%}
    {%- set value = env_var('INTEREST_MAX_TEXT_WORDS', '256') -%}
    {%- if not modules.re.fullmatch('[1-9][0-9]*', value) -%}
        {{ exceptions.raise_compiler_error(
            "INTEREST_MAX_TEXT_WORDS must be a positive integer, got '" ~ value ~ "'"
        ) }}
    {%- endif -%}
    {{ return(value | int) }}
{%- endmacro %}


{#-
    A text cut to its first max_text_words() words; a cut text ends with ' […]' so that anyone
    reading it (evidence, the CLI) sees it was truncated. Shorter texts are returned unchanged.
-#}
{% macro truncate_words(text) -%}
    case
        when len(regexp_split_to_array(trim({{ text }}), '\s+')) > {{ max_text_words() }}
            then array_to_string(
                regexp_split_to_array(trim({{ text }}), '\s+')[1:{{ max_text_words() }}], ' '
            ) || ' […]'
        else {{ text }}
    end
{%- endmacro %}
