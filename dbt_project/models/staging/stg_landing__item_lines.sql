with

source as (

    select * from {{ source('landing', 'item_lines') }}
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

        json_type(line_json, '$.item_id') as item_id_kind,
        json_extract_string(line_json, '$.item_id') as item_id,
        nullif(trim(json_extract_string(line_json, '$.title')), '') as title,
        nullif(trim(json_extract_string(line_json, '$.description')), '') as description,
        nullif(trim(json_extract_string(line_json, '$.category')), '') as category,

        json_type(line_json, '$.tags') as tags_kind,
        json_extract(line_json, '$.tags[*]') as tag_values,
        json_type(line_json, '$.price') as price_kind,
        json_extract_string(line_json, '$.price') as price_text,
        json_type(line_json, '$.updated_at') as updated_at_kind,
        json_extract_string(line_json, '$.updated_at') as updated_at_text

    from decoded

),

typed as (

    select
        *,
        (
            tags_kind = 'ARRAY'
            and coalesce(
                list_bool_and(list_transform(tag_values, lambda tag: json_type(tag) = 'VARCHAR')),
                true
            )
        ) as is_tags_list_of_strings,
        -- Tags are trimmed and blank ones dropped; order and case are kept (they are shown).
        case
            when tags_kind = 'ARRAY'
                then list_filter(
                    list_transform(tag_values, lambda tag: trim(json_extract_string(tag, '$'))),
                    lambda tag: tag <> ''
                )
            else []
        end as tags,
        {{ parse_number('price_kind', 'price_text') }} as price,
        {{ parse_utc_timestamp('updated_at_kind', 'updated_at_text') }} as updated_at

    from extracted

),

checked as (

    select
        *,
        coalesce(
            line_problem,
            case
                when not {{ is_scalar_id('item_id_kind') }}
                    then 'item_id is not a string or number'
                when {{ is_missing('item_id') }}
                    then 'missing required field: item_id'
                when title is null
                    then 'missing required field: title'
                when {{ is_present('updated_at_kind') }} and updated_at is null
                    then 'unparsable updated_at'
                when {{ is_present('tags_kind') }} and not is_tags_list_of_strings
                    then 'tags is not a list of strings'
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
        item_id,
        title,
        description,
        category,
        cast(tags as varchar[]) as tags,
        price,
        updated_at,
        rejection_reason

    from checked

)

select * from final
