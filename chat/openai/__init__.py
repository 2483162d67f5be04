"""The OpenAI-compatible API (`/v1`): protocol, serving and router, as vLLM splits its entrypoints.

Programs written for OpenAI's API (its official SDKs, LangChain, curl
scripts) work against SanjAI by pointing their base URL at `/v1` and using a
SanjAI API key. Each completion is stored as a conversation of the key's owner
and runs through the same Celery worker as the chat page; the web process
never generates. Streaming answers are server-sent events read from the
conversation's channel-layer group by an async generator; a client that
disconnects cancels its reply.

Structured output (`response_format` json_object or json_schema) becomes the
submit path's `response_schema`: local models decode under the schema's
grammar, so the reply parses; remote ones are asked for it. Function calling
(`tools`, `tool_choice`, `parallel_tool_calls`, `role: "tool"` results) runs
on local models in the Hermes format (inference/tools.py); a required call is
decoded under its tool's schema. What SanjAI does not do (several choices,
log probabilities, frequency and presence penalties) is refused with a 400
that names the field, never silently ignored. A field sent as null counts as absent, so clients that echo back
full message objects (`"tool_calls": null`) work.

Files (`/v1/files`, purpose `user_data`) are the caller's documents
(chat.services.documents) under OpenAI's names; a user message's file parts
(`{"type": "file", "file": {"file_id": ...}}`, or inline `file_data`) attach
them to the exchange's conversation, whose replies search them. An answer
about files carries the reply's `citations` beside `choices` (a SanjAI
extension; in a stream, on the chunk with the finish reason).

- `protocol`: the request as pydantic models, and its refusals in OpenAI's shape;
- `files`: the file objects, uploads, and the documents a completion's file parts name;
- `serving`: one exchange, from the submit path to the whole or streamed answer;
- `router`: the routes and their error envelope (`sanjai_site/urls.py` mounts `router.api`).
"""
