// A loopback S3 server for tests/S3Tests.cs: s3rver over a directory, signatures checked against one
// account (S3RVER / S3RVER), the bucket(s) named on the command line created empty.
//
//   node server.mjs DIRECTORY BUCKET…   prints "listening PORT" once it accepts requests
//
// s3rver 3.7.1 answers AbortMultipartUpload with 405 and ListMultipartUploads with NotImplemented. Both
// are added here over s3rver's own store (an upload is the directory BUCKET/._S3rver_uploads/ID holding
// the key, the metadata and the parts), registered right after s3rver's authentication so they are
// signed like every other request. Nothing else is changed.
import { createRequire } from 'node:module';
import fs from 'node:fs/promises';
import path from 'node:path';

const require = createRequire(import.meta.url);
const S3rver = require('s3rver');
const router = require('s3rver/lib/routes');

const [directory, ...buckets] = process.argv.slice(2);
const uploadsOf = bucket => path.join(directory, bucket, '._S3rver_uploads');
const xml = s => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

async function abortUpload(ctx, next) {
  if (ctx.method !== 'DELETE' || !('uploadId' in ctx.query)) return next();
  const dir = path.join(uploadsOf(ctx.params.bucket), path.basename(ctx.query.uploadId));
  try {
    await fs.access(dir);
  } catch {
    ctx.status = 404;
    ctx.type = 'application/xml';
    ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchUpload</Code><Message>The specified upload does not exist.</Message></Error>';
    return;
  }
  await fs.rm(dir, { recursive: true, force: true });
  ctx.status = 204;
}

async function listUploads(ctx, next) {
  if (ctx.method !== 'GET' || !('uploads' in ctx.query) || ctx.params.key) return next();
  const prefix = ctx.query.prefix || '';
  let ids = [];
  try { ids = await fs.readdir(uploadsOf(ctx.params.bucket)); } catch { ids = []; }
  const uploads = [];
  for (const id of ids) {
    const dir = path.join(uploadsOf(ctx.params.bucket), id);
    const key = await fs.readFile(path.join(dir, 'key'), 'utf8').catch(() => null);
    if (key === null || !key.startsWith(prefix)) continue;
    const { mtime } = await fs.stat(dir);
    uploads.push(`<Upload><Key>${xml(key)}</Key><UploadId>${xml(id)}</UploadId><Initiated>${mtime.toISOString()}</Initiated><StorageClass>STANDARD</StorageClass></Upload>`);
  }
  ctx.type = 'application/xml';
  ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
    `<Bucket>${xml(ctx.params.bucket)}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker><Prefix>${xml(prefix)}</Prefix>` +
    `<MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>${uploads.join('')}</ListMultipartUploadsResult>`;
}

// Right after the authentication layer, before s3rver's own routes for the same paths.
router.use('/:bucket/:key+', abortUpload);
router.use('/:bucket', listUploads);
const added = router.stack.splice(router.stack.length - 2, 2);
const auth = router.stack.findIndex(layer => layer.stack.some(fn => fn.name === 'authentication'));
if (auth < 0) throw new Error('s3rver changed: its authentication layer was not found');
router.stack.splice(auth + 1, 0, ...added);

const server = new S3rver({
  address: '127.0.0.1',
  port: 0,
  silent: true,
  directory,
  configureBuckets: buckets.map(name => ({ name })),
});
const { port } = await server.run();
console.log(`listening ${port}`);
process.on('SIGTERM', () => server.close().then(() => process.exit(0)));
