// Runs every server audit of the `graphql-http` package (GraphQL over HTTP spec draft) against
// a running server: `node graphql-http-audit.mjs http://127.0.0.1:8080/graphql`.
// Exits 1 when a MUST fails; prints every SHOULD and MAY that does not pass, with its reason.
import { serverAudits } from 'graphql-http';

const url = process.argv[2] ?? process.env.GRAPHQL_URL;
if (!url) {
  console.error('usage: node graphql-http-audit.mjs <graphql url>');
  process.exit(2);
}

const results = [];
for (const audit of serverAudits({ url, fetchFn: fetch })) {
  results.push(await audit.fn());
}

const tally = { MUST: [0, 0], SHOULD: [0, 0], MAY: [0, 0] };
const failures = [];
for (const result of results) {
  const level = result.name.split(' ')[0];
  tally[level][result.status === 'ok' ? 0 : 1] += 1;
  if (result.status !== 'ok') {
    failures.push(result);
  }
}
for (const result of failures) {
  const mark = result.status === 'error' ? 'FAIL' : 'warn';
  console.log(`${mark} ${result.id} ${result.name}: ${result.reason}`);
}
for (const [level, [ok, notOk]] of Object.entries(tally)) {
  console.log(`${level}: ${ok} passed, ${notOk} not passed`);
}
process.exit(failures.some((r) => r.status === 'error') ? 1 : 0);
