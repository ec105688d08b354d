with

items as (

    select * from {{ ref('items') }}

),

documents as (

    -- Title, category, tags, description: the text that is embedded for the item. The parts are
    -- already trimmed and blank ones are NULL (staging), so the text has no stray spaces.
    select
        item_id,
        title
        || case when category is not null then '. Category: ' || category else '' end
        || case
            when len(tags) > 0 then '. Tags: ' || array_to_string(tags, ', ')
            else ''
        end
        || case when description is not null then '. ' || description else '' end
            as full_document

    from items

),

truncated as (

    -- Cut to what the model reads; a cut document ends with ' […]'.
    select
        item_id,
        {{ truncate_words('full_document') }} as document

    from documents

),

final as (

    select
        item_id,
        document,
        -- Hex SHA-256 of the UTF-8 text: the same key the Python side computes for queries.
        sha256(document) as text_hash

    from truncated

)

select * from final
