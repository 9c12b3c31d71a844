// A minimal mcprt client for a page on the server's origin: make a session, join a document, append text,
// follow everyone's edits. (One edit at a time, each sent on the last revision seen: an editor with a
// caret needs the OT client in static/ot.js, as the demo uses.)
async function mcprtJoin(documentId, userId, onChange) {
  const reply = await fetch('/api/sessions', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ user_id: userId }),
  });
  const session = await reply.json();
  const ws = new WebSocket(`${session.websocket_url}&document_id=${encodeURIComponent(documentId)}`);
  let revision = 0;
  let content = '';
  const send = (type, payload) => ws.send(JSON.stringify({
    id: crypto.randomUUID(), type, payload, timestamp: new Date().toISOString(),
  }));
  const joined = new Promise((resolve) => {
    ws.onmessage = (event) => {
      const { type, payload } = JSON.parse(event.data);
      if (type === 'document_state' || type === 'realtime_edit' || type === 'edit_ack') {
        ({ revision, content } = payload);
        onChange(content, type);
        if (type === 'document_state') resolve();
      }
    };
  });
  await joined;
  return {
    append(text) {
      send('realtime_edit', { base_revision: revision, change_delta: { position: [...content].length, insert: text } });
    },
    close() { ws.close(); },
  };
}
