# Run once by the postgres image on an empty volume, after init.sql (a copy of
# deploy/postgres/init.sql; files run in name order; this one is sourced, as it is not
# executable): role `todo` gets the password of the Secret `postgres` (key todo-password) in
# place of init.sql's demo password, so the demo's never reaches a cluster's Service.
if [ -z "${TODO_PASSWORD:-}" ]; then
  echo "set-password.sh: TODO_PASSWORD is empty (Secret postgres, key todo-password)" >&2
  exit 1
fi
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
  --set=password="$TODO_PASSWORD" <<'SQL'
ALTER ROLE todo PASSWORD :'password';
SQL
