// Mermaid's parser as a filter for tests/diagrams: one JSON string (a diagram's text) per line on
// stdin, one JSON answer per line on stdout: {ok, error} and, when it parsed, the participants'
// names, the messages and notes ({type, from, to, text}) and the title as Mermaid holds them.
import { JSDOM } from 'jsdom';
import { createInterface } from 'node:readline';

const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const mermaid = (await import('mermaid')).default;
mermaid.initialize({ startOnLoad: false });

for await (const line of createInterface({ input: process.stdin })) {
  let answer;
  try {
    const diagram = await mermaid.mermaidAPI.getDiagramFromText(JSON.parse(line));
    const db = diagram.db;
    answer = {
      ok: true,
      type: diagram.type,
      actors: [...db.getActors().values()].map((a) => a.description),
      messages: db.getMessages().map((m) => ({ type: m.type, from: m.from, to: m.to, text: m.message })),
      title: db.getDiagramTitle ? db.getDiagramTitle() : null,
    };
  } catch (e) {
    answer = { ok: false, error: String((e && e.message) || e) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
