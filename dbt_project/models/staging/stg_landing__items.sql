{#-
    Incremental, not a view: the catalog is the accumulation of every hour's upserts, and raw
    holds only lines. Each run deletes its interval (pre-hook) and appends it again, so a rerun
    replaces exactly that hour. full_refresh is off because the model only ever computes one
    interval: a full refresh would throw away every other hour.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        on_schema_change='fail',
        full_refresh=false,
        pre_hook="{{ delete_interval() }}",
    )
}}

with

item_lines as (

    select * from {{ ref('stg_landing__item_lines') }}

),

valid_items as (

    select
        item_id,
        title,
        description,
        category,
        tags,
        price,
        updated_at,
        interval_start,
        source_file,
        line_number

    from item_lines
    where rejection_reason is null

),

final as (

    -- An upsert log: within each arrival hour the last line for an item is its version.
    select * from valid_items
    qualify row_number() over (
        partition by item_id, interval_start
        order by source_file desc, line_number desc
    ) = 1

)

select * from final
