-- Settings: the server parameters the settings checks look at.

-- name: select_settings
-- the named parameters with their value, unit and where the value comes from
SELECT name::text,
       setting::text,
       coalesce(unit, '') AS unit,
       source::text,
       coalesce(short_desc, '') AS description
  FROM pg_settings
 WHERE name = ANY (%(names)s::text[])
 ORDER BY name;
