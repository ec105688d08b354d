with

item_versions as (

    select * from {{ ref('stg_landing__items') }}

),

final as (

    -- The newest valid version wins: by arrival hour, then position in the landed files.
    -- Corrupt lines never reach stg_landing__items, so they cannot replace a good version.
    select * from item_versions
    qualify row_number() over (
        partition by item_id
        order by interval_start desc, source_file desc, line_number desc
    ) = 1

)

select * from final
