// Run once by the mongo image on an empty volume, as the root user compose creates. The root
// user is for this and for an operator administering users; no service connects as it.
const readModel = db.getSiblingDB("todo_read");

// query-service: reads and writes the read model's one database, nothing else (no other
// database, no user or role administration).
readModel.createUser({
  user: "query-service",
  pwd: "query-service-demo",
  roles: [{ role: "readWrite", db: "todo_read" }],
});

// An operator's read-only user (looking into the read model, `verify`-style checks by hand):
// role read on todo_read only. Its password comes from the environment and is never in a file;
// without MONGO_OPERATOR_PASSWORD no such user is made.
if (process.env.MONGO_OPERATOR_PASSWORD) {
  readModel.createUser({
    user: "operator",
    pwd: process.env.MONGO_OPERATOR_PASSWORD,
    roles: [{ role: "read", db: "todo_read" }],
  });
}
