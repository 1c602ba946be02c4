// Unit tests of the page's Markdown parser (server/src/routes/web/
// markdown.js), run with `node --test` by server/tests/web_ui.rs. The
// parser only produces plain objects; the page builds DOM nodes from them
// with textContent, so the safety property checked here is that markup the
// parser does not know (raw HTML above all) stays text.
import { test } from "node:test";
import assert from "node:assert/strict";
import { parse, parseInline } from "../../server/src/routes/web/markdown.js";

const text = (t) => ({ type: "text", text: t });

test("raw HTML is text, never an element", () => {
  const blocks = parse('<img src=x onerror="alert(1)"> and <script>alert(2)</script>');
  assert.deepEqual(blocks, [
    { type: "paragraph", children: [text('<img src=x onerror="alert(1)"> and <script>alert(2)</script>')] },
  ]);
});

test("fenced code keeps its text verbatim, language and all", () => {
  const blocks = parse("Run:\n\n```sh\necho '<b>' **not bold**\n```\nDone.");
  assert.deepEqual(blocks, [
    { type: "paragraph", children: [text("Run:")] },
    { type: "code", lang: "sh", text: "echo '<b>' **not bold**" },
    { type: "paragraph", children: [text("Done.")] },
  ]);
});

test("an unclosed fence (still streaming) runs to the end", () => {
  assert.deepEqual(parse("~~~\nfn main() {"), [{ type: "code", lang: "", text: "fn main() {" }]);
});

test("a shorter or different fence does not close a block", () => {
  assert.deepEqual(parse("````\n```\n~~~~\n````"), [{ type: "code", lang: "", text: "```\n~~~~" }]);
});

test("bullet and numbered lists, with continuation lines", () => {
  const blocks = parse("- one\n- two\n  more\n\n3. three\n4) four");
  assert.deepEqual(blocks, [
    { type: "list", ordered: false, start: 1, items: [[text("one")], [text("two\nmore")]] },
    { type: "list", ordered: true, start: 3, items: [[text("three")], [text("four")]] },
  ]);
});

test("headings and quotes", () => {
  assert.deepEqual(parse("## Title ##\n> quoted\n> more"), [
    { type: "heading", level: 2, children: [text("Title")] },
    { type: "quote", children: [text("quoted\nmore")] },
  ]);
});

test("inline code, strong and emphasis; snake_case and lone stars stay text", () => {
  assert.deepEqual(parseInline("use `a<b>` **very _much_** and snake_case_name, 2 * 3 * 4"), [
    text("use "),
    { type: "code", text: "a<b>" },
    text(" "),
    { type: "strong", children: [text("very "), { type: "em", children: [text("much")] }] },
    text(" and snake_case_name, 2 * 3 * 4"),
  ]);
  assert.deepEqual(parseInline("``code with ` tick``"), [{ type: "code", text: "code with ` tick" }]);
  assert.deepEqual(parseInline("unclosed `tick and **star"), [text("unclosed `tick and **star")]);
  assert.deepEqual(parseInline("\\*not em\\*"), [text("*not em*")]);
});

test("links are not made clickable", () => {
  assert.deepEqual(parse("[click](javascript:alert(1))"), [
    { type: "paragraph", children: [text("[click](javascript:alert(1))")] },
  ]);
});
