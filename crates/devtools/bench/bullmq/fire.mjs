// BullMQ, the delayed-job queue most teams would reach for, firing N delayed jobs that
// all fall due at one instant: the reference the régua issue's firing target is set
// against ("twice what BullMQ fires on this machine class with 100k jobs due at
// once"). `regua-bench scheduler --bullmq` runs it on a private redis-server, in the
// same run as the scheduler's own firing.
//
// Jobs are added with `addBulk` as delayed jobs due at one instant (after they are all
// in), each removed on completion (BullMQ's leanest setting); at that instant a worker
// with `CONCURRENCY` slots and a no-op processor starts. Timed from the due instant to
// the N-th completion. Prints one JSON line.
import { Queue, Worker } from 'bullmq';

const n = Number(process.env.N || 100000);
const concurrency = Number(process.env.CONCURRENCY || 50);
const connection = { host: '127.0.0.1', port: Number(process.env.REDIS_PORT || 6379) };

const queue = new Queue('regua-bench-fire', { connection });
await queue.obliterate({ force: true });
// Time enough to add every job before the first falls due (addBulk stores about 20k
// jobs/s here).
const due = Date.now() + Math.max(2000, n / 5);
for (let i = 0; i < n; i += 1000) {
  const jobs = [];
  for (let j = i; j < Math.min(n, i + 1000); j++) {
    jobs.push({
      name: 'step',
      data: { invoice_id: `INV-${j}`, step: 'D-3' },
      opts: { jobId: `step-${j}`, delay: due - Date.now(), removeOnComplete: true },
    });
  }
  await queue.addBulk(jobs);
}
if (Date.now() >= due) {
  console.error('adding the jobs took longer than the lead time; the run would not start with all due');
  process.exit(2);
}
await new Promise((resolve) => setTimeout(resolve, due - Date.now()));
const started = Date.now();
let completed = 0;
const finished = await new Promise((resolve) => {
  const worker = new Worker('regua-bench-fire', async () => {}, { connection, concurrency });
  worker.on('completed', () => {
    completed += 1;
    if (completed === n) {
      const at = Date.now();
      worker.close().then(() => resolve(at));
    }
  });
});
const secs = (finished - started) / 1000;
console.log(JSON.stringify({ jobs: n, concurrency, secs, jobs_per_sec: n / secs }));
await queue.obliterate({ force: true });
await queue.close();
process.exit(0);
