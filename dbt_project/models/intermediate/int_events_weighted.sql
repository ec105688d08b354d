with

events as (

    select * from {{ ref('stg_landing__events') }}
    where {{ in_run_interval('interval_start') }}

),

event_weights as (

    select * from {{ ref('event_weights') }}

),

joined as (

    select
        events.*,
        event_weights.base_weight,
        event_weights.value_mode

    from events
    -- A left join so that a type missing from the seed shows up as a NULL weight (and fails
    -- the not_null test) instead of silently dropping its events.
    left join event_weights
        on events.event_type = event_weights.event_type

),

weighted as (

    select
        *,
        case value_mode
            when 'none' then base_weight
            -- A negative quantity is a cancellation: a negative signal of the same strength.
            when 'sign' then base_weight * sign(coalesce(value, 1))
            -- A rated item was still chosen, so a rating never pushes away: clamp to [0, 5].
            when 'rating' then base_weight * greatest(0, least(5, coalesce(value, 5))) / 5
        end as weight

    from joined

),

final as (

    select
        event_id,
        user_id,
        event_type,
        item_id,
        query_text,
        target_user_id,
        value,
        event_at,
        base_weight,
        value_mode,
        cast(weight as double) as weight,
        interval_start,
        source_file,
        line_number

    from weighted

)

select * from final
