// A small Markdown renderer for the model's answers, safe by construction:
// `parse` turns text into a tree of plain objects (tested in node:
// tests/web/markdown.test.mjs), and `render` builds DOM nodes from it with
// createElement and textContent only. Nothing the model writes is ever
// parsed as HTML, so raw HTML in an answer shows as text, and the page's
// CSP (no inline script) holds.
//
// Supported: fenced code blocks (``` or ~~~, with a language), headings
// (#..######), bullet and numbered lists, block quotes, paragraphs, and
// inline `code`, **bold** and *italic* / _italic_. Links stay text: a
// clickable link written by a model is a phishing vector.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const CLOSING = /^ {0,3}(`{3,}|~{3,})\s*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^ {0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;

// Inline spans: `code` first (nothing inside it is markup), then **strong**
// and *em* / _em_, which may nest.
export function parseInline(text) {
  const out = [];
  let plain = "";
  const flush = () => {
    if (plain) out.push({ type: "text", text: plain });
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && /[\\`*_#>[\]()-]/.test(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      let ticks = 1;
      while (text[i + ticks] === "`") ticks++;
      const marker = "`".repeat(ticks);
      const end = text.indexOf(marker, i + ticks);
      if (end > i) {
        flush();
        out.push({ type: "code", text: text.slice(i + ticks, end).replace(/^ (.*) $/, "$1") });
        i = end + ticks;
        continue;
      }
      plain += marker;
      i += ticks;
      continue;
    }
    if ((c === "*" && text[i + 1] === "*") || (c === "_" && text[i + 1] === "_")) {
      const marker = c + c;
      const end = text.indexOf(marker, i + 2);
      if (end > i + 2) {
        flush();
        out.push({ type: "strong", children: parseInline(text.slice(i + 2, end)) });
        i = end + 2;
        continue;
      }
    } else if (c === "*" || c === "_") {
      // An emphasis opener is followed by a non-space; `_` inside a word
      // (snake_case) is not markup.
      const wordBefore = c === "_" && i > 0 && /\w/.test(text[i - 1]);
      const end = text.indexOf(c, i + 1);
      if (!wordBefore && end > i + 1 && !/\s/.test(text[i + 1]) && !/\s/.test(text[end - 1])) {
        const wordAfter = c === "_" && end + 1 < text.length && /\w/.test(text[end + 1]);
        if (!wordAfter) {
          flush();
          out.push({ type: "em", children: parseInline(text.slice(i + 1, end)) });
          i = end + 1;
          continue;
        }
      }
    }
    plain += c;
    i++;
  }
  flush();
  return out;
}

// Block structure, line by line.
export function parse(text) {
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  const blocks = [];
  let paragraph = [];
  const endParagraph = () => {
    if (paragraph.length) blocks.push({ type: "paragraph", children: parseInline(paragraph.join("\n")) });
    paragraph = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      endParagraph();
      const marker = fence[1];
      const code = [];
      i++;
      // An unclosed fence (an answer still streaming) runs to the end.
      const closes = (l) => {
        const m = CLOSING.exec(l);
        return m && m[1][0] === marker[0] && m[1].length >= marker.length;
      };
      while (i < lines.length && !closes(lines[i])) {
        code.push(lines[i]);
        i++;
      }
      blocks.push({ type: "code", lang: fence[2] || "", text: code.join("\n") });
      continue;
    }
    if (line.trim() === "") {
      endParagraph();
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      endParagraph();
      blocks.push({ type: "heading", level: heading[1].length, children: parseInline(heading[2]) });
      continue;
    }
    const bullet = BULLET.exec(line);
    const numbered = NUMBERED.exec(line);
    if (bullet || numbered) {
      endParagraph();
      const ordered = !bullet;
      const list = { type: "list", ordered, start: ordered ? Number(numbered[1]) : 1, items: [] };
      for (; i < lines.length; i++) {
        const item = ordered ? NUMBERED.exec(lines[i]) : BULLET.exec(lines[i]);
        if (item) {
          list.items.push([ordered ? item[2] : item[1]]);
        } else if (/^\s{2,}\S/.test(lines[i]) && list.items.length) {
          // A continuation line of the item above.
          list.items[list.items.length - 1].push(lines[i].trim());
        } else {
          i--;
          break;
        }
      }
      list.items = list.items.map((parts) => parseInline(parts.join("\n")));
      blocks.push(list);
      continue;
    }
    const quote = QUOTE.exec(line);
    if (quote) {
      endParagraph();
      const quoted = [];
      for (; i < lines.length; i++) {
        const q = QUOTE.exec(lines[i]);
        if (!q) {
          i--;
          break;
        }
        quoted.push(q[1]);
      }
      blocks.push({ type: "quote", children: parseInline(quoted.join("\n")) });
      continue;
    }
    paragraph.push(line);
  }
  endParagraph();
  return blocks;
}

function inlineNodes(doc, parent, nodes) {
  for (const node of nodes) {
    if (node.type === "text") {
      parent.appendChild(doc.createTextNode(node.text));
    } else if (node.type === "code") {
      const code = doc.createElement("code");
      code.textContent = node.text;
      parent.appendChild(code);
    } else {
      const element = doc.createElement(node.type === "strong" ? "strong" : "em");
      inlineNodes(doc, element, node.children);
      parent.appendChild(element);
    }
  }
}

// DOM nodes for the tree. `onCopy(text, button)` is called by the copy
// button of a code block.
export function render(doc, blocks, onCopy) {
  const fragment = doc.createDocumentFragment();
  for (const block of blocks) {
    let element;
    switch (block.type) {
      case "code": {
        element = doc.createElement("div");
        element.className = "code-block";
        const bar = doc.createElement("div");
        bar.className = "code-bar";
        const lang = doc.createElement("span");
        lang.textContent = block.lang;
        const copy = doc.createElement("button");
        copy.type = "button";
        copy.className = "copy";
        copy.textContent = "Copy";
        copy.addEventListener("click", () => onCopy(block.text, copy));
        bar.append(lang, copy);
        const pre = doc.createElement("pre");
        const code = doc.createElement("code");
        code.textContent = block.text;
        pre.appendChild(code);
        element.append(bar, pre);
        break;
      }
      case "heading":
        element = doc.createElement(`h${Math.min(block.level + 2, 6)}`);
        inlineNodes(doc, element, block.children);
        break;
      case "list":
        element = doc.createElement(block.ordered ? "ol" : "ul");
        if (block.ordered && block.start !== 1) element.start = block.start;
        for (const item of block.items) {
          const li = doc.createElement("li");
          inlineNodes(doc, li, item);
          element.appendChild(li);
        }
        break;
      case "quote":
        element = doc.createElement("blockquote");
        inlineNodes(doc, element, block.children);
        break;
      default:
        element = doc.createElement("p");
        inlineNodes(doc, element, block.children);
    }
    fragment.appendChild(element);
  }
  return fragment;
}
