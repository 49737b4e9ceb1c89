/*
 * xml_rewrite: the Inbound Relay's streaming XML field rewriter, the XML sibling of json_rewrite.h
 * (same shape, callbacks, deferred-transform pattern and bounded memory; read that header first).
 * A push parser validates a request body strictly (well-formed XML 1.0 in UTF-8, no DTD) as it
 * arrives in pieces of any size and forwards it through an emit callback; the text of the
 * elements picked by a jsonpath set is handed to a transform callback and replaced by what it
 * returns. Everything outside the selected text spans (declaration, comments, tags, attributes,
 * whitespace, namespace declarations, references) is forwarded byte for byte, straight from the
 * caller's input buffer.
 *
 * Selection (the product's "JSON fields apply to JSON and XML requests"). The document is seen
 * as a JSON-like tree whose root is the root element: `$` is the root element, and its child
 * elements are its members.
 *   - A child element is one path step named by its element name exactly as written, prefix
 *     included (`<ns:ssn>` is `$['ns:ssn']`; namespace URIs are not resolved), followed by an
 *     optional second step: its index among the earlier siblings of the same name. So in
 *     `<r><items><card>A</card><x/><card>B</card></items></r>`, `$.items.card` and `$..card`
 *     select both cards, `$.items.card[1]` the second, `$.items[0].card` and `$.items[*].card`
 *     both (a single `<items>` is index 0), `$.items.*` both.
 *   - Because `.*` and `[*]` match any step, they may also consume that optional index step:
 *     `$.a.*` selects a's children and, when `<a>` itself holds text only, `<a>` too. Selection
 *     may thereby be wider than in JSON, never narrower.
 *   - Attributes are not selectable (and never change).
 * What is transformed: a selected element whose content is character data (text, the five
 * predefined entity references, character references, CDATA sections) is one transform call of
 * type EVS__RW_STRING with the decoded text (line ends normalised to \n as XML requires;
 * leading and trailing whitespace kept). The returned bytes replace the element's content between
 * its start and end tags verbatim: they are not XML-escaped (ev: strings need no escaping), so a
 * transform returning arbitrary text must escape it itself. A selected element with child
 * elements has each text-only descendant transformed, as a JSON object has its leaves.
 *   - Not transformed: empty elements (`<a/>`, `<a></a>`) and elements whose content is only
 *     literal whitespace and comments. Any character data beyond that (a CDATA section or a
 *     character reference, even one that decodes to whitespace or nothing) makes a text leaf.
 *   - Comments before the first character data of a selected leaf are kept; comments after it
 *     are part of the replaced content (dropped).
 *   - Inside a selected element, text next to child elements (mixed content) other than literal
 *     whitespace is refused (EVS__RW_E_MIXED): it could be neither encrypted alone nor passed.
 *
 * Strictness (refused: the relay answers bad-request): a DOCTYPE or any other markup declaration
 * (so no entity is ever declared or expanded: no XXE, no billion laughs); entity references other
 * than &amp; &lt; &gt; &quot; &apos;; processing instructions other than the XML declaration at
 * the very start (`<?xml version="1.0" [encoding="UTF-8"] [standalone=..]?>`, after an optional
 * UTF-8 BOM; PIs are refused rather than passed through because they are instructions to the
 * receiving application that the relay cannot vouch for); an encoding other than UTF-8; invalid
 * UTF-8 or characters outside XML 1.0's Char production; malformed or mismatched tags; `]]>` or
 * `--` where XML forbids them; non-whitespace outside the root element; a second root element; a
 * document not complete at finish. Non-ASCII name characters are accepted as any valid UTF-8
 * (Unicode name classes are not checked) and duplicate attribute names are not detected; neither
 * affects selection.
 *
 * Memory is bounded by the nesting depth and the largest selected text, not by the body size:
 * per open element a frame with one jsonpath state word per selector, the names of the open
 * elements (<= max_value bytes together), the decoded current selected text (<= max_value
 * bytes, also bounding literal whitespace held before a selected element's first child), and
 * 16 bytes per distinct child name of the open elements whose selection is still undecided (for
 * sibling indices; <= max_keys in all). Sibling names are counted by a 64-bit hash: a collision
 * (probability ~ k^2 / 2^65 for k names) can only shift the index of one element of the sender's
 * own request.
 *
 * Errors (the rewriter is then poisoned and returns the same error on every later call):
 *   EVS__RW_E_SYNTAX   malformed XML (bad-request)
 *   EVS__RW_E_DEPTH    elements nested deeper than max_depth
 *   EVS__RW_E_TOOBIG   selected text, an element name, or the open elements' names together
 *                        longer than max_value
 *   EVS__RW_E_KEYS     more than max_keys distinct child names held for sibling indices
 *   EVS__RW_E_EVDATA   unselected text (an element's character data between two tags, or an
 *                        attribute value), with surrounding whitespace ignored, that looks like
 *                        an ev: string (the json_rewrite.h rule) (encrypted-data-in-field)
 *   EVS__RW_E_DOCTYPE   a DOCTYPE or other markup declaration (<!ENTITY, <!ELEMENT, ...)
 *   EVS__RW_E_ENTITY    a reference to an entity other than the five predefined ones
 *   EVS__RW_E_PI        a processing instruction other than the leading XML declaration
 *   EVS__RW_E_ENCODING  an XML declaration naming an encoding other than UTF-8
 *   EVS__RW_E_MIXED     non-whitespace text beside child elements inside a selected element
 *   -ENOMEM, or any negative value a callback returned (passed through unchanged).
 *
 * Asynchronous transforms: exactly as json_rewrite.h describes (EVS__RW_DEFER records a hole at
 * the caller's current output position; transform and emit calls are strictly ordered).
 *
 * Threading: one rewriter per request, used from one thread at a time.
 */
#ifndef EVS_RELAY_XML_REWRITE_H
#define EVS_RELAY_XML_REWRITE_H

#include <stddef.h>
#include <stdint.h>

#include "jsonpath.h"
#include "rewriter.h"

struct evs__xml_rewrite_opts {
  size_t size;        /* sizeof(struct evs__xml_rewrite_opts) */
  unsigned max_depth; /* open elements; 0: 256 */
  size_t max_value;   /* decoded selected text, one name, all open names together; 0: 1 MiB */
  size_t max_keys;    /* distinct child names held for sibling indices; 0: 100000 */
  int allow_ev;      /* nonzero: unselected ev:-looking values pass (no EVS__RW_E_EVDATA) */
};

struct evs__xml_rewrite;
typedef struct evs__xml_rewrite evs__xml_rewrite;

/* Creates a rewriter. paths (borrowed, must outlive the rewriter) may be NULL: then nothing is
 * selected and the rewriter only validates and forwards. opts may be NULL for the defaults.
 * transform is called with type EVS__RW_STRING only; value[len] is a NUL. Returns 0 and sets
 * *ret_rw (free with evs__xml_rewrite_free), or -EINVAL / -ENOMEM. */
int evs__xml_rewrite_new(const evs__jsonpath *paths, const struct evs__xml_rewrite_opts *opts,
                         evs__rw_emit_fn emit, evs__rw_transform_fn transform, void *ud,
                         evs__xml_rewrite **ret_rw);

void evs__xml_rewrite_free(evs__xml_rewrite *rw);

/* Consumes buf[0..len) (any split of the body). Returns 0 or a negative error; callbacks run
 * from inside this call. */
int evs__xml_rewrite_feed(evs__xml_rewrite *rw, const char *buf, size_t len);

/* Signals the end of the body: fails with EVS__RW_E_SYNTAX unless a complete document (one
 * root element, optional prolog and trailing whitespace/comments) was fed. Returns 0 or a
 * negative error. */
int evs__xml_rewrite_finish(evs__xml_rewrite *rw);

/* The byte offset in the body where the error was detected (for logs). */
uint64_t evs__xml_rewrite_error_offset(const evs__xml_rewrite *rw);

/* Peak bytes allocated by the rewriter for its buffers, frames and name hashes. */
size_t evs__xml_rewrite_mem_high_water(const evs__xml_rewrite *rw);

/* A static English description of an EVS__RW_E_* code, in XML terms. */
const char *evs__xml_rewrite_strerror(int err);

#endif
