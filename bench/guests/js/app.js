// The JavaScript hello guest: same answer as guests/src/hello.c, from a
// StarlingMonkey engine built by componentize-js.
addEventListener("fetch", (event) =>
  event.respondWith(new Response("Hello from dormouse!\n", { headers: { "content-type": "text/plain" } })),
);
