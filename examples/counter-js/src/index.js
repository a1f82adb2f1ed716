// counter-js: a greeting from a Spin variable, and counters kept in Spin's
// key-value store, through the fermyon:spin@2.0.0 interfaces.
//   GET  /hello          "<greeting> from JavaScript!"
//   POST /count/NAME     adds one to counter NAME, answers the new count
//   GET  /count/NAME     the count (0 if none)
//   GET  /counters       every counter, one `NAME=COUNT` per line
import { Store } from 'fermyon:spin/key-value@2.0.0';
import { get as variable } from 'fermyon:spin/variables@2.0.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function count(store, name) {
  const value = store.get(`count:${name}`);
  return value === undefined ? 0 : Number(decoder.decode(value));
}

function text(body, status = 200) {
  return new Response(body, { status, headers: { 'content-type': 'text/plain' } });
}

async function handle(request) {
  const url = new URL(request.url);
  if (url.pathname === '/hello') {
    return text(`${variable('greeting')} from JavaScript!\n`);
  }
  const store = Store.open('default');
  const counter = url.pathname.match(/^\/count\/([A-Za-z0-9_-]+)$/);
  if (counter && request.method === 'POST') {
    const next = count(store, counter[1]) + 1;
    store.set(`count:${counter[1]}`, encoder.encode(String(next)));
    return text(`${next}\n`);
  }
  if (counter) {
    return text(`${count(store, counter[1])}\n`);
  }
  if (url.pathname === '/counters') {
    const names = store.getKeys().filter((key) => key.startsWith('count:')).sort();
    return text(names.map((key) => `${key.slice(6)}=${count(store, key.slice(6))}\n`).join(''));
  }
  return text('not found\n', 404);
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
