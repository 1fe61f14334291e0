// Run once by the mongo image on an empty volume (as the root user compose creates): the
// read model's own user, reading and writing its one database and nothing else.
db.getSiblingDB("todo_read").createUser({
  user: "todo",
  pwd: "todo",
  roles: [{ role: "readWrite", db: "todo_read" }],
});
