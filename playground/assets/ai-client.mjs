// What the playground takes from the `ai` package: the transport useChat posts with, and
// the reader that turns its UI message stream into messages.
export { DefaultChatTransport, readUIMessageStream } from "ai";
