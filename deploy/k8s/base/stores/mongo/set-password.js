// Run once by the mongo image on an empty volume, as its root user, after init.js (a copy
// of deploy/mongo/init.js; files run in name order): user `query-service` gets the password
// of the Secret `mongo` (key query-service-password) in place of init.js's demo password, so
// the demo's never reaches a cluster's Service.
const password = process.env.QUERY_SERVICE_PASSWORD;
if (!password) {
  throw new Error("QUERY_SERVICE_PASSWORD is empty (Secret mongo, key query-service-password)");
}
db.getSiblingDB("todo_read").updateUser("query-service", { pwd: password });
