-- The part files of the run's interval as the ingest task read them: size, lines read, and why
-- a file could not be read whole (read_problem), if it could not.
with

source as (

    select * from {{ source('landing', 'files') }}
    where {{ in_run_interval('interval_start') }}

),

final as (

    select
        interval_start,
        interval_end,
        source_kind,
        source_file,
        size_bytes,
        lines_read,
        read_problem,
        loaded_at

    from source

)

select * from final
