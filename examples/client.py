"""A minimal mcprt client in Python (asyncio, `websockets`): make a session, join a document, type a
line, and print what the others type, until interrupted.

    python examples/client.py http://localhost:3000 notes alice "hello from alice"
"""

import asyncio
import json
import sys
import urllib.request
import uuid

import websockets


def create_session(base: str, user_id: str) -> dict:
    request = urllib.request.Request(f"{base}/api/sessions", data=json.dumps({"user_id": user_id}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as reply:
        return json.load(reply)


def message(type_: str, payload: dict) -> str:
    return json.dumps({"id": uuid.uuid4().hex, "type": type_, "payload": payload,
                       "timestamp": "2025-01-01T00:00:00Z"})


async def run(base: str, document_id: str, user_id: str, text: str, listen: float | None = None) -> str:
    session = create_session(base, user_id)
    url = f"{session['websocket_url']}&document_id={document_id}"
    async with websockets.connect(url) as ws:
        state = json.loads(await ws.recv())["payload"]           # document_state: content and revision
        print(f"joined {document_id} at revision {state['revision']}: {state['content']!r}")
        await ws.send(message("realtime_edit", {"base_revision": state["revision"],
                                                "change_delta": {"position": len(state["content"]), "insert": text}}))
        content = state["content"]
        async with asyncio.timeout(listen or None):  # 0: return at the ack
            async for raw in ws:
                reply = json.loads(raw)
                if reply["type"] == "edit_ack":
                    content = reply["payload"]["content"]
                    print(f"acknowledged as revision {reply['payload']['revision']}")
                    if listen == 0:
                        return content
                elif reply["type"] == "realtime_edit":
                    content = reply["payload"]["content"]
                    print(f"{reply['payload']['user_id']}: {content!r}")
                elif reply["type"] == "error":
                    print(f"error {reply['payload']['code']}: {reply['payload']['message']}")
    return content


if __name__ == "__main__":
    base, document_id, user_id, text = sys.argv[1:5]
    try:
        asyncio.run(run(base, document_id, user_id, text))
    except KeyboardInterrupt:
        pass
