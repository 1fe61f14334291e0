-- Run once by the postgres image on an empty volume (as its superuser): the service's own
-- role, no superuser, owning the one database it uses.
CREATE ROLE todo LOGIN PASSWORD 'todo';
CREATE DATABASE todos OWNER todo;
