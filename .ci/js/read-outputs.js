// Reads ccm-tally outputs with the official CloudEvents JavaScript SDK's Kafka binding.
// stdin: JSON lines {"headers": {...}, "key": "...", "value": "..."}: Kafka messages as a
// kafkajs consumer hands them over once header Buffers are turned into strings.
// Every message must parse to the envelope's id, type and data; and the same message without
// its headers must be refused ("No CloudEvent detected"), which is why the header is there.
"use strict";
const { Kafka } = require("cloudevents");
const readline = require("readline");

const lines = [];
readline.createInterface({ input: process.stdin }).on("line", (l) => l.trim() && lines.push(l));
process.stdin.on("end", () => {
  let ok = 0;
  for (const line of lines) {
    const message = JSON.parse(line);
    const envelope = JSON.parse(message.value);
    const event = Kafka.toEvent(message);
    if (event.id !== envelope.id || event.type !== envelope.type) {
      throw new Error(`attributes differ for ${envelope.id}`);
    }
    if (JSON.stringify(event.data) !== JSON.stringify(envelope.data)) {
      throw new Error(`data differs for ${envelope.id}`);
    }
    let refused = false;
    try {
      Kafka.toEvent({ ...message, headers: {} });
    } catch (err) {
      refused = /No CloudEvent detected/.test(String(err && err.message));
    }
    if (!refused) throw new Error("a message without headers was not refused");
    ok += 1;
  }
  if (ok === 0) throw new Error("no messages read");
  console.log(`cloudevents-js: ${ok} outputs read as CloudEvents (structured mode)`);
});
