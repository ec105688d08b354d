{#-
    A table, not a view: stg_landing__events, int_event_id_conflicts and quarantine all read
    it, and as a view each of them re-parsed every JSON line of the interval. It holds only
    the current run's interval and is rebuilt every run.
-#}
{{ config(materialized='table') }}
with

source as (

    select * from {{ source('landing', 'event_lines') }}
    where {{ in_run_interval('interval_start') }}

),

trimmed as (

    select
        *,
        {{ trim_line('line') }} as trimmed_line

    from source

),

decoded as (

    select
        *,
        try_cast(trimmed_line as json) as line_json

    from trimmed

),

extracted as (

    select
        interval_start,
        interval_end,
        source_file,
        line_number,
        line,
        loaded_at,
        -- What the reader found (damaged file, bad UTF-8, too long) comes before parsing.
        coalesce(read_problem, {{ json_object_problem('trimmed_line', 'line_json') }})
            as line_problem,

        json_type(line_json, '$.event_id') as event_id_kind,
        json_type(line_json, '$.user_id') as user_id_kind,
        json_type(line_json, '$.item_id') as item_id_kind,
        json_type(line_json, '$.target_user_id') as target_user_id_kind,
        json_extract_string(line_json, '$.event_id') as event_id,
        json_extract_string(line_json, '$.user_id') as user_id,
        json_extract_string(line_json, '$.event_type') as event_type,
        json_extract_string(line_json, '$.item_id') as item_id,
        json_extract_string(line_json, '$.target_user_id') as target_user_id,
        {{ truncate_words(
            "nullif(lower(trim(json_extract_string(line_json, '$.query'))), '')"
        ) }} as query_text,

        json_type(line_json, '$.event_time') as event_time_kind,
        json_extract_string(line_json, '$.event_time') as event_time_text,
        json_type(line_json, '$.value') as value_kind,
        json_extract_string(line_json, '$.value') as value_text

    from decoded

),

typed as (

    select
        *,
        {{ parse_utc_timestamp('event_time_kind', 'event_time_text') }} as event_at,
        {{ parse_number('value_kind', 'value_text') }} as value

    from extracted

),

checked as (

    select
        *,
        coalesce(
            line_problem,
            case
                when not {{ is_scalar_id('event_id_kind') }}
                    then 'event_id is not a string or number'
                when not {{ is_scalar_id('user_id_kind') }}
                    then 'user_id is not a string or number'
                when not {{ is_scalar_id('item_id_kind') }}
                    then 'item_id is not a string or number'
                when not {{ is_scalar_id('target_user_id_kind') }}
                    then 'target_user_id is not a string or number'
                when {{ is_missing('event_id') }}
                    then 'missing required field: event_id'
                when {{ is_missing('event_time_text') }}
                    then 'missing required field: event_time'
                when {{ is_missing('user_id') }}
                    then 'missing required field: user_id'
                when {{ is_missing('event_type') }}
                    then 'missing required field: event_type'
                when event_type not in {{ sql_string_list(known_event_types()) }}
                    then 'unknown event_type: ' || event_type
                when event_at is null
                    then 'unparsable event_time'
                when event_at > interval_end + interval ({{ max_event_skew_hours() }}) hour
                    then
                        'event_time more than {{ max_event_skew_hours() }} h after its arrival hour'
                when event_at < cast('{{ min_event_time() }}' as timestamp)
                    then 'event_time before {{ min_event_time() }}'
                when
                    event_type in {{ sql_string_list(item_event_types()) }}
                    and {{ is_missing('item_id') }}
                    then 'item event without item_id'
                when event_type in ('search', 'tag') and query_text is null
                    then 'search/tag event without query'
                when event_type in ('follow', 'unfollow') and {{ is_missing('target_user_id') }}
                    then event_type || ' event without target_user_id'
                when {{ is_present('value_kind') }} and value is null
                    then 'value is not a number'
            end
        ) as rejection_reason

    from typed

),

final as (

    select
        interval_start,
        interval_end,
        source_file,
        line_number,
        line,
        loaded_at,
        event_id,
        event_time_text,
        event_at,
        user_id,
        event_type,
        item_id,
        query_text,
        value,
        target_user_id,
        rejection_reason

    from checked

)

select * from final
