// The client class of the reference API document (shared/spec/websocket-api.md, "JavaScript Client"),
// copied verbatim so the test runs wherever the tests do; test_websocket.py checks it still matches.
class MCPWebSocketClient {
  constructor(sessionId) {
    this.sessionId = sessionId;
    this.ws = null;
    this.isConnected = false;
  }

  async connect() {
    const wsUrl = `ws://localhost:3000/ws?session_id=${this.sessionId}`;
    this.ws = new WebSocket(wsUrl);
    
    this.ws.onopen = () => {
      this.isConnected = true;
      console.log('Connected to MCP-RS WebSocket');
      this.startHeartbeat();
    };
    
    this.ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      this.handleMessage(message);
    };
    
    this.ws.onclose = () => {
      this.isConnected = false;
      console.log('Disconnected from MCP-RS WebSocket');
    };
  }

  sendEdit(content, cursorPosition) {
    if (!this.isConnected) return;
    
    const message = {
      id: crypto.randomUUID(),
      type: 'realtime_edit',
      payload: {
        content: content,
        cursor_position: cursorPosition,
        user_id: this.userId
      },
      timestamp: new Date().toISOString()
    };
    
    this.ws.send(JSON.stringify(message));
  }

  handleMessage(message) {
    switch (message.type) {
      case 'realtime_edit':
        this.onEdit(message.payload);
        break;
      case 'heartbeat_ack':
        console.log('Heartbeat acknowledged');
        break;
      case 'error':
        console.error('WebSocket error:', message.payload);
        break;
    }
  }

  startHeartbeat() {
    setInterval(() => {
      if (this.isConnected) {
        const heartbeat = {
          id: crypto.randomUUID(),
          type: 'heartbeat',
          payload: {},
          timestamp: new Date().toISOString()
        };
        this.ws.send(JSON.stringify(heartbeat));
      }
    }, 30000); // Every 30 seconds
  }

  onEdit(payload) {
    // Override this method to handle incoming edits
    console.log('Received edit:', payload);
  }
}
