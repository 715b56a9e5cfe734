// The second S3 client of tests/S3Tests.cs (the AWS SDK for JavaScript), so what a worker uploaded is
// checked by a client that shares no code with it. Endpoint and credentials from the environment
// (S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
//
//   node client.mjs list BUCKET PREFIX     one line per object: KEY<TAB>SIZE<TAB>casparian-job-id
//   node client.mjs get BUCKET KEY FILE    downloads the object to FILE
import fs from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { S3Client, ListObjectsV2Command, GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';

const client = new S3Client({ endpoint: process.env.S3_ENDPOINT, region: 'us-east-1', forcePathStyle: true });
const [command, bucket, ...rest] = process.argv.slice(2);

if (command === 'list') {
  let token;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: rest[0] || undefined, ContinuationToken: token }));
    for (const o of page.Contents ?? []) {
      const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: o.Key }));
      console.log(`${o.Key}\t${o.Size}\t${head.Metadata?.['casparian-job-id'] ?? ''}`);
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
} else if (command === 'get') {
  const object = await client.send(new GetObjectCommand({ Bucket: bucket, Key: rest[0] }));
  await pipeline(object.Body, fs.createWriteStream(rest[1]));
} else {
  console.error(`usage: node client.mjs list BUCKET PREFIX | get BUCKET KEY FILE (got ${command})`);
  process.exit(2);
}
