// A record system's MLLP receiver built on npm node-hl7-server (a peer nobody here wrote).
// It answers AA to every message (its ACKs carry `ACK` in MSH-10) and writes each message
// it parsed to OUT_DIR.
//
// usage: node dpi_server.js PORT OUT_DIR   (prints "listening PORT" once bound)
'use strict';
const fs = require('fs');
const path = require('path');
const { Server } = require('node-hl7-server');

const port = Number(process.argv[2]);
const out = process.argv[3];
let n = 0;
const server = new Server({ bindAddress: '127.0.0.1' });
const inbound = server.createInbound({ port }, async (req, res) => {
  n += 1;
  const name = path.join(out, String(n).padStart(6, '0') + '.hl7');
  fs.writeFileSync(name, req.getMessage().toString());
  await res.sendResponse('AA');
});
inbound.on('listen', () => console.log('listening ' + port));
