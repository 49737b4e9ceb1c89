/*
 * Unit tests for plugins/relay-common/xml_rewrite.c: byte-exact forwarding (compared with a
 * non-streaming reference, tests/unit/xml_rewrite_ref.h, for whole, byte-by-byte and random
 * splits), the selection rules of xml_rewrite.h for every selector form, decoded transform values
 * (references, CDATA, line ends), the deferred (async) transform pattern, every rejection (DTD,
 * entities, PIs, encodings, malformed and mismatched markup, two roots, bad UTF-8, mixed content
 * in a selected element, ev:-looking unselected text), the limits, and bounded memory on a 25 MB
 * body fed in 64 KiB pieces.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonpath.h"
#include "xml_rewrite.h"

#include "xml_rewrite_ref.h"

/* ---- harness (rewrite_harness.h) ---------------------------------------------------------- */

#define RW_HARNESS_SEED 12345
#include "rewrite_harness.h"

static int rw_marker(char *b, size_t cap, evs__rw_type type, unsigned k) {
  (void)type;
  return snprintf(b, cap, "#%u", k);
}

/* Every XML value is text; vhash is xref_hash over the values. */
static void rw_on_value(struct sink *s, evs__rw_type type, const char *v, size_t n) {
  assert_int_equal(type, EVS__RW_STRING);
  s->vhash = xref_hash(s->vhash, v, n);
}

/* mode 0: whole; 1: byte by byte; 2: random splits. Returns the feed/finish result. */
static int rewrite(const evs__jsonpath *jp, const struct evs__xml_rewrite_opts *o, const char *in,
                   size_t n, int mode, struct sink *s) {
  evs__xml_rewrite *rw = NULL;
  int r;
  sink_start(s);
  assert_int_equal(evs__xml_rewrite_new(jp, o, sink_emit, sink_transform, s, &rw), 0);
  r = rw_feed_all(&evs__xml_rewriter, rw, in, n, mode, 17);
  evs__xml_rewrite_free(rw);
  return r;
}

static int rewrite_o(const evs__jsonpath *jp, const struct evs__xml_rewrite_opts *o, const char *in,
                     int mode, struct sink *s) {
  return rewrite(jp, o, in, strlen(in), mode, s);
}

static int rewrite_str(const evs__jsonpath *jp, const char *in, struct sink *s) {
  return rewrite(jp, NULL, in, strlen(in), 0, s);
}

/* Rewrites doc with one selector and compares the output with want (NULL: same as doc). */
static void expect(const char *sel, const char *doc, const char *want) {
  evs__jsonpath *jp = paths(sel, NULL);
  for (int mode = 0; mode < 3; mode++) {
    struct sink s;
    int r = rewrite(jp, NULL, doc, strlen(doc), mode, &s);
    if (r != 0) fail_msg("%s on %s: %s", sel, doc, evs__xml_rewrite_strerror(r));
    if (strcmp(s.out, want ? want : doc) != 0)
      fail_msg("%s on %s (mode %d):\n got %s\nwant %s", sel, doc, mode, s.out, want ? want : doc);
    free(s.out);
  }
  evs__jsonpath_free(jp);
}

/* ---- byte-exact forwarding ------------------------------------------------------------------ */

static const char *const corpus[] = {
    "<user><name>Claude Shannon</name><ssn>123-12-1234</ssn></user>",
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- head -->\n<user id='7' xmlns=\"urn:x\">\r\n"
    "  <name first=\"C&amp;S\">Claude &amp; &#x53;hannon</name>\r\n  <ssn>\r\n123\r\n</ssn>\n"
    "</user>\n<!-- tail -->\n",
    "\xEF\xBB\xBF<r><items><card>4111</card><x/><card type=\"v\"><![CDATA[4<2&]]]]></card>"
    "<card></card><card/><card>  </card></items></r>",
    "<r><a><b><c><ssn>deep</ssn><card>1</card></c></b></a><items>x</items><items><card>y</card>"
    "</items></r>",
    "<r>\n <ssn><!-- before -->  <![CDATA[]]></ssn>\n <ssn><!-- a --> <!-- b -->t<!-- c -->u</ssn>"
    "\n <ssn> <!-- only ws --> </ssn>\n</r>",
    "<ns:doc xmlns:ns=\"urn:n\"><ns:ssn>1</ns:ssn><ssn a=\"&lt;&gt;&quot;&apos;\">&#169;&#xE9;"
    "\xf0\x9f\x98\x80</ssn></ns:doc>",
    "<r><ssn/><ssn></ssn><ssn>   </ssn><ssn>\t&#32;</ssn></r>",
    "<r>text <b>bold</b> more <ssn>s</ssn> tail</r>",
    "<r><x>ev:but:not:quite</x><y>ev:</y><z> plain ]] &gt; ]</z></r>",
    "<root/>",
    "<r><items><card><n>1</n><m>2</m></card><card>  <n>3</n>\n</card></items></r>",
};

static const char *const selsets[][2] = {
    {"$.ssn", NULL},           {"$..ssn", "$..card"},      {"$.items[*].card", NULL},
    {"$.items[0]", "$.a.b"},   {"$", NULL},                {"$..*", NULL},
    {"$['a']['b'].c", NULL},   {"$.items.card[1]", "$.*"}, {"$.nothing", NULL},
    {"$['ns:ssn']", "$.name"}, {"$.items.*", "$..n[0]"},
};

static void check_doc(const evs__jsonpath *jp, const char *doc) {
  size_t n = strlen(doc);
  struct xref *ref = calloc(1, sizeof *ref);
  struct sink s;
  int r0;
  assert_non_null(ref);
  r0 = rewrite(jp, NULL, doc, n, 0, &s);
  free(s.out);
  if (r0 == EVS__RW_E_MIXED) { /* a selected element with mixed content: refused whole */
    for (int mode = 1; mode < 3; mode++) {
      assert_int_equal(rewrite(jp, NULL, doc, n, mode, &s), EVS__RW_E_MIXED);
      free(s.out);
    }
    free(ref);
    return;
  }
  xref_run(ref, jp, doc, n);
  for (int mode = 0; mode < 3; mode++) {
    for (int rep = 0; rep < (mode == 2 ? 20 : 1); rep++) {
      int r = rewrite(jp, NULL, doc, n, mode, &s);
      if (r != 0) fail_msg("doc %s mode %d: %s", doc, mode, evs__xml_rewrite_strerror(r));
      if (s.len != ref->olen || memcmp(s.out, ref->out, s.len) != 0)
        fail_msg("doc %s mode %d:\n got %.*s\nwant %s", doc, mode, (int)s.len, s.out, ref->out);
      assert_int_equal(s.k, ref->k);
      assert_true(s.vhash == ref->vhash);
      free(s.out);
    }
  }
  /* only the selected spans changed: putting the originals back gives the input */
  assert_int_equal(rewrite(jp, NULL, doc, n, 1, &s), 0);
  assert_true(xref_put_back(ref, doc, n, s.out, s.len));
  if (ref->k) assert_false(xref_put_back(ref, doc, n, doc, n));
  free(s.out);
  free(ref->out);
  free(ref);
}

static void test_byte_exact(void **state) {
  (void)state;
  for (size_t d = 0; d < sizeof corpus / sizeof corpus[0]; d++) {
    for (int mode = 0; mode < 3; mode++) {
      struct sink s;
      int r = rewrite(NULL, NULL, corpus[d], strlen(corpus[d]), mode, &s);
      if (r != 0) fail_msg("identity %s: %s", corpus[d], evs__xml_rewrite_strerror(r));
      assert_string_equal(s.out, corpus[d]);
      free(s.out);
    }
    for (size_t k = 0; k < sizeof selsets / sizeof selsets[0]; k++) {
      evs__jsonpath *jp = paths(selsets[k][0], selsets[k][1]);
      check_doc(jp, corpus[d]);
      evs__jsonpath_free(jp);
    }
  }
}

/* ---- selection rules ------------------------------------------------------------------------ */

static void test_selection(void **state) {
  const char *user = "<user><name>A</name><ssn>1</ssn></user>";
  const char *items = "<r><items><card>A</card><x/><card>B</card></items></r>";
  const char *two = "<r><items><card>A</card></items><items><card>B</card></items></r>";
  (void)state;
  /* the root element is $, its children are members */
  expect("$.ssn", user, "<user><name>A</name><ssn>#0</ssn></user>");
  expect("$..ssn", user, "<user><name>A</name><ssn>#0</ssn></user>");
  expect("$['ssn']", user, "<user><name>A</name><ssn>#0</ssn></user>");
  expect("$[\"name\"]", user, "<user><name>#0</name><ssn>1</ssn></user>");
  expect("$.user.ssn", user, NULL); /* the root's own name is not a step */
  expect("$", user, "<user><name>#0</name><ssn>#1</ssn></user>");
  expect("$.*", user, "<user><name>#0</name><ssn>#1</ssn></user>");
  expect("$[*]", user, "<user><name>#0</name><ssn>#1</ssn></user>");
  /* nested names */
  expect("$.a.b", "<r><a><b>1</b><c>2</c></a><b>3</b></r>",
         "<r><a><b>#0</b><c>2</c></a><b>3</b></r>");
  expect("$['a']['b']", "<r><a><b>1</b></a></r>", "<r><a><b>#0</b></a></r>");
  /* repeated siblings: name selects all, [N] counts same-named siblings only */
  expect("$.items.card", items, "<r><items><card>#0</card><x/><card>#1</card></items></r>");
  expect("$..card", items, "<r><items><card>#0</card><x/><card>#1</card></items></r>");
  expect("$.items.card[1]", items, "<r><items><card>A</card><x/><card>#0</card></items></r>");
  expect("$.items.card[0]", items, "<r><items><card>#0</card><x/><card>B</card></items></r>");
  expect("$.items.card[2]", items, NULL);
  expect("$.items.x[0]", items, NULL); /* empty: never transformed */
  expect("$.items[0].card", items, "<r><items><card>#0</card><x/><card>#1</card></items></r>");
  expect("$.items[*].card", items, "<r><items><card>#0</card><x/><card>#1</card></items></r>");
  expect("$.items[*].card[1]", items, "<r><items><card>A</card><x/><card>#0</card></items></r>");
  expect("$.items[1].card", two,
         "<r><items><card>A</card></items><items><card>#0</card></items></r>");
  expect("$.items[*].card", two,
         "<r><items><card>#0</card></items><items><card>#1</card></items></r>");
  expect("$.items[0]", two, "<r><items><card>#0</card></items><items><card>B</card></items></r>");
  expect("$..card[1]", items, "<r><items><card>A</card><x/><card>#0</card></items></r>");
  /* wildcards: .* also consumes the optional index step (documented) */
  expect("$.items.*", items, "<r><items><card>#0</card><x/><card>#1</card></items></r>");
  expect("$.a.*", "<r><a>t</a></r>", "<r><a>#0</a></r>");
  expect("$..*", "<r><a><b>1</b></a><c>2</c></r>", "<r><a><b>#0</b></a><c>#1</c></r>");
  /* a selected container has its text leaves transformed, whitespace and tags kept */
  expect("$.card", "<r><card>\n  <n a=\"1\">4111</n>\n  <e><m>12</m><y/></e>\n</card></r>",
         "<r><card>\n  <n a=\"1\">#0</n>\n  <e><m>#1</m><y/></e>\n</card></r>");
  /* prefixes are part of the name; attributes pass through */
  expect("$['p:ssn']", "<p:r xmlns:p=\"u\"><p:ssn k=\"v\">1</p:ssn><ssn>2</ssn></p:r>",
         "<p:r xmlns:p=\"u\"><p:ssn k=\"v\">#0</p:ssn><ssn>2</ssn></p:r>");
  expect("$.ssn", "<r><p:ssn xmlns:p=\"u\">1</p:ssn></r>", NULL);
  /* empty and whitespace-only content is kept; CDATA and references make text */
  expect("$.s", "<r><s/><s></s><s> \n </s><s><![CDATA[]]></s><s>&#32;</s></r>",
         "<r><s/><s></s><s> \n </s><s>#0</s><s>#1</s></r>");
  /* comments: kept before the text, replaced after it */
  expect("$.s", "<r><s> <!--c--> x<!--d-->y </s></r>", "<r><s> <!--c-->#0</s></r>");
  expect("$.s", "<r><s><!--c--></s></r>", NULL);
  /* the selected leaf's span covers everything between its tags */
  expect("$.s", "<r><s>\r\n a &amp; <![CDATA[<b>]]> </s ></r>", "<r><s>#0</s ></r>");
}

/* ---- transform values ----------------------------------------------------------------------- */

static void test_values(void **state) {
  evs__jsonpath *jp = paths("$.*", NULL);
  struct sink s;
  const char *doc = "<r>"
                    "<a>x &amp;&lt;&gt;&quot;&apos; &#65;&#x42;&#x00e9;&#128512;</a>"
                    "<b><![CDATA[<raw> &amp; ]] ]]]></b>"
                    "<c>l1\r\nl2\rl3\n&#13;&#10;</c>"
                    "<d>  pre <![CDATA[\r\nin]]>&#x20;post  </d>"
                    "<e>\xc3\xa9\xe2\x82\xac</e>"
                    "</r>";
  (void)state;
  for (int mode = 0; mode < 3; mode++) {
    assert_int_equal(rewrite(jp, NULL, doc, strlen(doc), mode, &s), 0);
    assert_int_equal(s.k, 5);
    assert_string_equal(s.calls[0].value, "x &<>\"' AB\xc3\xa9\xf0\x9f\x98\x80");
    assert_string_equal(s.calls[1].value, "<raw> &amp; ]] ]");
    assert_string_equal(s.calls[2].value, "l1\nl2\nl3\n\r\n");
    assert_string_equal(s.calls[3].value, "  pre \nin post  ");
    assert_string_equal(s.calls[4].value, "\xc3\xa9\xe2\x82\xac");
    assert_string_equal(s.out, "<r><a>#0</a><b>#1</b><c>#2</c><d>#3</d><e>#4</e></r>");
    free(s.out);
  }
  evs__jsonpath_free(jp);
}

/* The async pattern: the transform defers, the caller records holes at its output offsets and
 * fills them later; the result equals the synchronous one. */
static void test_deferred(void **state) {
  evs__jsonpath *jp = paths("$..ssn", "$..card");
  const char *doc = corpus[2];
  struct sink sync, async;
  evs__xml_rewrite *rw = NULL;
  char *joined;
  size_t jl = 0, last = 0;
  (void)state;
  assert_int_equal(rewrite_str(jp, doc, &sync), 0);
  assert_true(sync.k >= 2);
  memset(&async, 0, sizeof async);
  async.store = true;
  async.defer = true;
  assert_int_equal(evs__xml_rewrite_new(jp, NULL, sink_emit, sink_transform, &async, &rw), 0);
  for (size_t i = 0; i < strlen(doc); i++)
    assert_int_equal(evs__xml_rewrite_feed(rw, doc + i, 1), 0);
  assert_int_equal(evs__xml_rewrite_finish(rw), 0);
  evs__xml_rewrite_free(rw);
  assert_int_equal(async.k, sync.k);
  joined = malloc(sync.len + 1);
  assert_non_null(joined);
  for (unsigned k = 0; k < async.k; k++) { /* the batch came back: fill the holes */
    char m[32];
    int ml = snprintf(m, sizeof m, "#%u", k);
    memcpy(joined + jl, async.out + last, async.holes[k] - last);
    jl += async.holes[k] - last;
    memcpy(joined + jl, m, (size_t)ml);
    jl += (size_t)ml;
    last = async.holes[k];
  }
  memcpy(joined + jl, async.out + last, async.len - last);
  jl += async.len - last;
  assert_int_equal(jl, sync.len);
  assert_memory_equal(joined, sync.out, jl);
  free(joined);
  free(sync.out);
  free(async.out);
  evs__jsonpath_free(jp);
}

/* ---- errors --------------------------------------------------------------------------------- */

struct bad {
  const char *doc;
  int err;
};

static void test_rejections(void **state) {
  static const struct bad bad[] = {
      /* DTDs, entities, external entities, billion laughs */
      {"<!DOCTYPE r><r/>", EVS__RW_E_DOCTYPE},
      {"<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><r>&x;</r>",
       EVS__RW_E_DOCTYPE},
      {"<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]>"
       "<lolz>&lol2;</lolz>",
       EVS__RW_E_DOCTYPE},
      {"<!ENTITY x \"y\"><r/>", EVS__RW_E_DOCTYPE},
      {"<r><!ELEMENT r ANY></r>", EVS__RW_E_DOCTYPE},
      {"<!doctype r><r/>", EVS__RW_E_DOCTYPE},
      {"<r>&x;</r>", EVS__RW_E_ENTITY},
      {"<r>&lol2;</r>", EVS__RW_E_ENTITY},
      {"<r a=\"&ext;\"/>", EVS__RW_E_ENTITY},
      {"<r>&ampx;</r>", EVS__RW_E_ENTITY},
      {"<r>&AMP;</r>", EVS__RW_E_ENTITY},
      /* processing instructions and declarations */
      {"<?xml-stylesheet href=\"a\"?><r/>", EVS__RW_E_PI},
      {"<r><?php echo 1; ?></r>", EVS__RW_E_PI},
      {"<r/><?pi?>", EVS__RW_E_PI},
      {" <?xml version=\"1.0\"?><r/>", EVS__RW_E_PI},
      {"<?xml version=\"1.0\"?><?xml version=\"1.0\"?><r/>", EVS__RW_E_PI},
      {"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><r/>", EVS__RW_E_ENCODING},
      {"<?xml version=\"1.0\" encoding=\"UTF-16\"?><r/>", EVS__RW_E_ENCODING},
      {"<?xml?><r/>", EVS__RW_E_SYNTAX},
      {"<?xml version=\"1.1\"?><r/>", EVS__RW_E_SYNTAX},
      {"<?xml encoding=\"UTF-8\" version=\"1.0\"?><r/>", EVS__RW_E_SYNTAX},
      {"<?xml version=\"1.0\" standalone=\"maybe\"?><r/>", EVS__RW_E_SYNTAX},
      {"<?xml version=\"1.0\"standalone=\"yes\"?><r/>", EVS__RW_E_SYNTAX},
      /* structure */
      {"", EVS__RW_E_SYNTAX},
      {"   ", EVS__RW_E_SYNTAX},
      {"<r>", EVS__RW_E_SYNTAX},
      {"<r><a></r>", EVS__RW_E_SYNTAX},
      {"<r></R>", EVS__RW_E_SYNTAX},
      {"<r></rr>", EVS__RW_E_SYNTAX},
      {"<rr></r>", EVS__RW_E_SYNTAX},
      {"<r><a></b></r>", EVS__RW_E_SYNTAX},
      {"<r></>", EVS__RW_E_SYNTAX},
      {"<r/><r/>", EVS__RW_E_SYNTAX},
      {"<a></a><b></b>", EVS__RW_E_SYNTAX},
      {"x<r/>", EVS__RW_E_SYNTAX},
      {"<r/>x", EVS__RW_E_SYNTAX},
      {"<r/>&amp;", EVS__RW_E_SYNTAX},
      {"</r>", EVS__RW_E_SYNTAX},
      {"<r/></r>", EVS__RW_E_SYNTAX},
      {"<1r/>", EVS__RW_E_SYNTAX},
      {"< r/>", EVS__RW_E_SYNTAX},
      {"<r a/>", EVS__RW_E_SYNTAX},
      {"<r a=1/>", EVS__RW_E_SYNTAX},
      {"<r a=\"1\"b=\"2\"/>", EVS__RW_E_SYNTAX},
      {"<r a=\"<\"/>", EVS__RW_E_SYNTAX},
      {"<r a=\"1'/>", EVS__RW_E_SYNTAX},
      {"<r / >", EVS__RW_E_SYNTAX},
      {"<r>a < b</r>", EVS__RW_E_SYNTAX},
      {"<r>a & b</r>", EVS__RW_E_SYNTAX},
      {"<r>&#;</r>", EVS__RW_E_SYNTAX},
      {"<r>&#x;</r>", EVS__RW_E_SYNTAX},
      {"<r>&#0;</r>", EVS__RW_E_SYNTAX},
      {"<r>&#xD800;</r>", EVS__RW_E_SYNTAX},
      {"<r>&#x110000;</r>", EVS__RW_E_SYNTAX},
      {"<r>&#99999999999999999999;</r>", EVS__RW_E_SYNTAX},
      {"<r>&#xFFFE;</r>", EVS__RW_E_SYNTAX},
      {"<r>&amp</r>", EVS__RW_E_SYNTAX},
      {"<r>]]></r>", EVS__RW_E_SYNTAX},
      {"<r><!-- a -- b --></r>", EVS__RW_E_SYNTAX},
      {"<r><!-- a ---></r>", EVS__RW_E_SYNTAX},
      {"<r><!- a --></r>", EVS__RW_E_SYNTAX},
      {"<r><![CDATA[x]]></r><![CDATA[y]]>", EVS__RW_E_SYNTAX},
      {"<r><![cdata[x]]></r>", EVS__RW_E_SYNTAX},
      {"<r><![CDATA[x]></r>", EVS__RW_E_SYNTAX},
      {"<r><!-- open </r>", EVS__RW_E_SYNTAX},
      {"\xEF\xBB<r/>", EVS__RW_E_SYNTAX},
      /* encoding and characters */
      {"<r>\xff</r>", EVS__RW_E_SYNTAX},
      {"<r>\xc0\xaf</r>", EVS__RW_E_SYNTAX},
      {"<r>\xed\xa0\x80</r>", EVS__RW_E_SYNTAX},
      {"<r>\xf4\x90\x80\x80</r>", EVS__RW_E_SYNTAX},
      {"<r>\xef\xbf\xbe</r>", EVS__RW_E_SYNTAX},
      {"<r>\x01</r>", EVS__RW_E_SYNTAX},
      {"<r>\x00</r>", EVS__RW_E_SYNTAX},
      {"<r a=\"\x0c\"/>", EVS__RW_E_SYNTAX},
      {"<r/>\xc3", EVS__RW_E_SYNTAX},
      {"\xfe\xff\x00<\x00r\x00/\x00>", EVS__RW_E_SYNTAX},
  };
  evs__jsonpath *jp = paths("$..*", NULL);
  (void)state;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    size_t n = strlen(bad[i].doc);
    if (i == sizeof bad / sizeof bad[0] - 4) n = 8; /* the literal NUL */
    if (i == sizeof bad / sizeof bad[0] - 1) n = 10;
    for (int mode = 0; mode < 3; mode++) {
      struct sink s;
      int r = rewrite(mode ? jp : NULL, NULL, bad[i].doc, n, mode, &s);
      if (r != bad[i].err)
        fail_msg("%s (mode %d): got %d (%s), want %d", bad[i].doc, mode, r,
                 evs__xml_rewrite_strerror(r), bad[i].err);
      free(s.out);
    }
  }
  evs__jsonpath_free(jp);
}

static void test_accepted_edge_cases(void **state) {
  static const char *const ok[] = {
      "\xEF\xBB\xBF<?xml version='1.0' encoding='utf-8' standalone='yes' ?><r/>",
      "<?xml version=\"1.0\"?>\n\n<r\n a = \"1\"\tb='&lt;\"'/>\n",
      "<r>a > b ]] ] &gt; </r>",
      "<r><!----><!-- - --><!-->--></r>",
      "<r>&#x10FFFF;&#9;&#xA;&#0000065;</r>",
      "<_a.b-c:d\xc3\xa9><_a.b-c:d\xc3\xa9/></_a.b-c:d\xc3\xa9 >",
      "<r><![CDATA[]]]]><![CDATA[>]]></r>",
      "<r>\x7f\t\r\n</r>",
  };
  evs__jsonpath *jp = paths("$..*", NULL);
  (void)state;
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    for (int mode = 0; mode < 3; mode++) {
      struct sink s;
      int r = rewrite(mode == 1 ? jp : NULL, NULL, ok[i], strlen(ok[i]), mode, &s);
      if (r != 0) fail_msg("%s (mode %d): %s", ok[i], mode, evs__xml_rewrite_strerror(r));
      if (mode != 1) assert_string_equal(s.out, ok[i]);
      free(s.out);
    }
  }
  evs__jsonpath_free(jp);
}

static void test_mixed_content(void **state) {
  static const char *const mixed[] = {
      "<r><s>text<b>1</b></s></r>", "<r><s><b>1</b>tail</s></r>", "<r><s><b>1</b>&#32;</s></r>",
      "<r><s><b>1</b><![CDATA[ ]]></s></r>", "<r><s>&#32;<b>1</b></s></r>",
      "<r><s>t<!-- c --><b>1</b></s></r>",
  };
  evs__jsonpath *jp = paths("$.s", NULL);
  struct sink s;
  (void)state;
  for (size_t i = 0; i < sizeof mixed / sizeof mixed[0]; i++) {
    for (int mode = 0; mode < 3; mode++) {
      assert_int_equal(rewrite(jp, NULL, mixed[i], strlen(mixed[i]), mode, &s), EVS__RW_E_MIXED);
      free(s.out);
    }
    /* unselected mixed content is fine */
    assert_int_equal(rewrite_str(NULL, mixed[i], &s), 0);
    free(s.out);
  }
  evs__jsonpath_free(jp);
}

static void test_ev_data(void **state) {
  static const char *const enc[] = {
      "<r><x>ev:RFVC:aXY=:ZXBo:Y3Q=:$</x></r>",
      "<r><x>\n  ev:Tk9D:number:aXY=:ZXBo:Y3Q=:$\n</x></r>",
      "<r>ev:RFVC:aXY:ZXBo:Y3Q_-:$</r>",
      "<r><x>&#101;v:RFVC:aXY=:ZXBo:Y3Q=:&#x24;</x></r>",
      "<r><x><![CDATA[ev:RFVC:aXY=:ZXBo]]>:Y3Q=:$</x></r>",
      "<r><x>ev:RFVC:aXY=<!-- split -->:ZXBo:Y3Q=:$</x></r>",
      "<r><x a=\"ev:RFVC:aXY=:ZXBo:Y3Q=:$\"/></r>",
      "<r><y/>ev:RFVC:aXY=:ZXBo:Y3Q=:$<z/></r>",
  };
  static const char *const plain[] = {
      "<r><x>ev:hello</x></r>", "<r><x>ev:RFVC:a b:ZXBo:Y3Q=:$</x></r>",
      "<r><x>ev:RFVC:aXY=:ZXBo:Y3Q=</x></r>", "<r><x>Xev:RFVC:aXY=:ZXBo:Y3Q=:$</x></r>",
      "<r><x>ev:RFVC:a:b:c:d:e:f:$</x></r>", "<r><x>ev:RFVC:aXY=<b/>:ZXBo:Y3Q=:$</x></r>",
      "<r><x>ev:RFVC:aXY=:ZXBo:Y3Q=:$ tail</x></r>",
  };
  evs__jsonpath *jp = paths("$.sel", NULL);
  struct sink s;
  (void)state;
  for (size_t i = 0; i < sizeof enc / sizeof enc[0]; i++) {
    for (int mode = 0; mode < 3; mode++) {
      int r = rewrite(jp, NULL, enc[i], strlen(enc[i]), mode, &s);
      if (r != EVS__RW_E_EVDATA) fail_msg("%s: %d", enc[i], r);
      free(s.out);
    }
  }
  for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
    if (rewrite(jp, NULL, plain[i], strlen(plain[i]), 1, &s) != 0) fail_msg("%s", plain[i]);
    free(s.out);
  }
  /* selected ev: data is the transform's business */
  assert_int_equal(rewrite_str(jp, "<r><sel>ev:RFVC:aXY=:ZXBo:Y3Q=:$</sel></r>", &s), 0);
  assert_int_equal(s.k, 1);
  free(s.out);
  evs__jsonpath_free(jp);
}

static void test_limits(void **state) {
  struct evs__xml_rewrite_opts o = {.size = sizeof o, .max_depth = 4, .max_value = 8,
                                    .max_keys = 3};
  evs__jsonpath *jp = paths("$..v", NULL), *all = paths("$..*[7]", NULL);
  struct sink s;
  (void)state;
  assert_int_equal(rewrite_o(NULL, &o, "<a><b><c><d/></c></b></a>", 0, &s), 0);
  free(s.out);
  assert_int_equal(rewrite_o(NULL, &o, "<a><b><c><d><e/></d></c></b></a>", 1, &s),
                   EVS__RW_E_DEPTH);
  free(s.out);
  assert_int_equal(rewrite_o(jp, &o, "<r><v>12345678</v></r>", 1, &s), 0);
  free(s.out);
  assert_int_equal(rewrite_o(jp, &o, "<r><v>123456789</v></r>", 1, &s), EVS__RW_E_TOOBIG);
  free(s.out);
  /* the cap is on decoded bytes: 8 references decode to 8 bytes */
  assert_int_equal(
      rewrite_o(jp, &o, "<r><v>&amp;&amp;&amp;&amp;&lt;&gt;&quot;&apos;</v></r>", 2, &s), 0);
  free(s.out);
  /* unselected text may be of any size; names are capped, one and all open together */
  assert_int_equal(rewrite_o(jp, &o, "<r><w>123456789012</w></r>", 1, &s), 0);
  free(s.out);
  assert_int_equal(rewrite_o(jp, &o, "<r><abcdefghi/></r>", 1, &s), EVS__RW_E_TOOBIG);
  free(s.out);
  assert_int_equal(rewrite_o(jp, &o, "<abc><defg><hi/></defg></abc>", 1, &s), EVS__RW_E_TOOBIG);
  free(s.out);
  assert_int_equal(rewrite_o(jp, &o, "<abc><defg></defg><defg/></abc>", 1, &s), 0);
  free(s.out);
  /* distinct child names are remembered only while their element is open */
  assert_int_equal(rewrite_o(all, &o, "<r><a/><b/><c/><a/></r>", 0, &s), 0);
  free(s.out);
  assert_int_equal(rewrite_o(all, &o, "<r><a/><b/><c/><d/></r>", 0, &s), EVS__RW_E_KEYS);
  free(s.out);
  assert_int_equal(rewrite_o(all, &o, "<r><x><a/><b/></x><x><c/><d/></x></r>", 0, &s), 0);
  free(s.out);
  /* and not at all when nothing could be selected below */
  {
    evs__jsonpath *ab = paths("$.a.b", NULL);
    assert_int_equal(rewrite_o(ab, &o, "<r><x/><y/><z/><w/><a><b>1</b></a></r>", 1, &s), 0);
    assert_string_equal(s.out, "<r><x/><y/><z/><w/><a><b>#0</b></a></r>");
    free(s.out);
    evs__jsonpath_free(ab);
  }
  /* literal whitespace held before a selected element's first child is capped too */
  assert_int_equal(rewrite_o(jp, &o, "<r><v>         <a/></v></r>", 1, &s), EVS__RW_E_TOOBIG);
  free(s.out);
  { /* the declaration is read into a fixed buffer */
    char doc[400];
    snprintf(doc, sizeof doc, "<?xml version=\"1.0\"%300s?><r/>", "");
    assert_int_equal(rewrite_o(NULL, NULL, doc, 1, &s), EVS__RW_E_SYNTAX);
    free(s.out);
    snprintf(doc, sizeof doc, "<?pi %300s?><r/>", "");
    assert_int_equal(rewrite_o(NULL, NULL, doc, 1, &s), EVS__RW_E_PI);
    free(s.out);
    snprintf(doc, sizeof doc, "<?xml version=\"1.0\"%200s?><r/>", "");
    assert_int_equal(rewrite_o(NULL, NULL, doc, 1, &s), 0);
    free(s.out);
  }
  { /* the default depth: 256 */
    char *doc = malloc(300 * 8);
    size_t n = 0;
    assert_non_null(doc);
    for (int i = 0; i < 257; i++) n += (size_t)sprintf(doc + n, "<a>");
    assert_int_equal(rewrite(NULL, NULL, doc, n, 0, &s), EVS__RW_E_DEPTH);
    free(s.out);
    free(doc);
  }
  evs__jsonpath_free(jp);
  evs__jsonpath_free(all);
}

static int emit_fail(void *ud, const char *b, size_t n) {
  (void)ud, (void)b, (void)n;
  return -EPIPE;
}

static int transform_fail(void *ud, evs__rw_type type, const char *v, size_t n, const char **ret,
                          size_t *ret_len) {
  (void)ud, (void)type, (void)v, (void)n, (void)ret, (void)ret_len;
  return -EIO;
}

static void test_callback_errors_and_poison(void **state) {
  evs__xml_rewrite *rw = NULL;
  struct sink s;
  evs__jsonpath *jp = paths("$.a", NULL);
  (void)state;
  assert_int_equal(evs__xml_rewrite_new(jp, NULL, sink_emit, NULL, NULL, &rw), -EINVAL);
  assert_int_equal(evs__xml_rewrite_new(NULL, NULL, emit_fail, NULL, NULL, &rw), 0);
  assert_int_equal(evs__xml_rewrite_feed(rw, "<r/>", 4), -EPIPE);
  assert_int_equal(evs__xml_rewrite_feed(rw, " ", 1), -EPIPE);
  assert_int_equal(evs__xml_rewrite_finish(rw), -EPIPE);
  evs__xml_rewrite_free(rw);
  memset(&s, 0, sizeof s);
  assert_int_equal(evs__xml_rewrite_new(jp, NULL, sink_emit, transform_fail, &s, &rw), 0);
  assert_int_equal(evs__xml_rewrite_feed(rw, "<r><a>1</a></r>", 15), -EIO);
  evs__xml_rewrite_free(rw);
  memset(&s, 0, sizeof s);
  assert_int_equal(evs__xml_rewrite_new(NULL, NULL, sink_emit, NULL, &s, &rw), 0);
  assert_int_equal(evs__xml_rewrite_feed(rw, "<r>\n<a>", 7), 0);
  assert_int_equal(evs__xml_rewrite_feed(rw, "</b>", 4), EVS__RW_E_SYNTAX);
  assert_int_equal(evs__xml_rewrite_error_offset(rw), 9);
  assert_int_equal(evs__xml_rewrite_feed(rw, "</a>", 4), EVS__RW_E_SYNTAX);
  evs__xml_rewrite_free(rw);
  memset(&s, 0, sizeof s);
  assert_int_equal(evs__xml_rewrite_new(NULL, NULL, sink_emit, NULL, &s, &rw), 0);
  assert_int_equal(evs__xml_rewrite_feed(rw, "<r>ab\xff", 6), EVS__RW_E_SYNTAX);
  assert_int_equal(evs__xml_rewrite_error_offset(rw), 5);
  evs__xml_rewrite_free(rw);
  { /* with several errors the first in the body is reported, however it is split */
    evs__jsonpath *s_ = paths("$.s", NULL);
    const char *two = "<r><s>t<b/>\xff</s></r>";
    for (int mode = 0; mode < 3; mode++) {
      assert_int_equal(rewrite(s_, NULL, two, strlen(two), mode, &s), EVS__RW_E_MIXED);
      free(s.out);
    }
    evs__jsonpath_free(s_);
  }
  evs__xml_rewrite_free(NULL);
  assert_string_equal(evs__xml_rewrite_strerror(EVS__RW_E_DOCTYPE),
                      "DOCTYPE or markup declaration in XML");
  evs__jsonpath_free(jp);
}

/* ---- bounded memory ------------------------------------------------------------------------- */

static void test_bounded_memory(void **state) {
  evs__jsonpath *jp = paths("$.items.item[*].card", "$..ssn");
  evs__xml_rewrite *rw = NULL;
  struct sink s;
  char *chunk = malloc(65536 + 1024);
  size_t fill = 0, total = 0, target = 25u * 1024 * 1024;
  unsigned long i = 0;
  size_t hw;
  (void)state;
  assert_non_null(chunk);
  memset(&s, 0, sizeof s); /* count only */
  assert_int_equal(evs__xml_rewrite_new(jp, NULL, sink_emit, sink_transform, &s, &rw), 0);
  fill = (size_t)sprintf(chunk, "<?xml version=\"1.0\"?>\n<doc><meta v=\"1\"/><items>\n");
  while (total + fill < target) {
    fill += (size_t)sprintf(chunk + fill,
                            "<item n=\"%lu\"><card>4111111111111111</card><name>customer %lu</name>"
                            "<!-- c --><ok>true</ok><ssn>123-45-%04lu</ssn><x/></item>\n",
                            i, i * 7919, i % 10000);
    i++;
    if (fill >= 65536) {
      assert_int_equal(evs__xml_rewrite_feed(rw, chunk, 65536), 0);
      total += 65536;
      memmove(chunk, chunk + 65536, fill - 65536);
      fill -= 65536;
    }
  }
  fill += (size_t)sprintf(chunk + fill, "</items></doc>\n");
  assert_int_equal(evs__xml_rewrite_feed(rw, chunk, fill), 0);
  total += fill;
  assert_int_equal(evs__xml_rewrite_finish(rw), 0);
  hw = evs__xml_rewrite_mem_high_water(rw);
  assert_int_equal(s.k, 2 * i);
  assert_true(total >= target);
  if (hw >= 4096) fail_msg("high water %zu bytes for a %zu-byte body", hw, total);
  evs__xml_rewrite_free(rw);
  evs__jsonpath_free(jp);
  free(chunk);
}

/* ---- reset ------------------------------------------------------------------------------------ */

/* Few names allowed, so that names a reset failed to forget would show. */
static void *make(const evs__jsonpath *jp, struct sink *s) {
  struct evs__xml_rewrite_opts o = {sizeof o, 0, 0, 16, 0};
  evs__xml_rewrite *rw = NULL;
  assert_int_equal(evs__xml_rewrite_new(jp, &o, sink_emit, sink_transform, s, &rw), 0);
  return rw;
}

/* A rewriter reset after any document (malformed, refused, deep, with many names, cut off in a
 * declaration, a CDATA section, a reference or the BOM) is as good as a new one
 * (rw_check_reset), under every selector set. */
static void test_reset_is_new(void **state) {
  static const char *const extra[] = {
      "<r><a>unterminated", "<r><ssn>1</ssn></x>", "<!DOCTYPE r><r/>", "<r>&bogus;</r>",
      "<a><a><a><a><a><a><a><a><a><a><a><a><a><a><a><a><ssn>d</ssn></a></a></a></a></a></a></a>"
      "</a></a></a></a></a></a></a></a></a>",
      "<r><k0/><k1/><k2/><k3/><k4/><k5/><k6/><k7/><k8/><k9/><ka><kb><ssn>x</ssn><ssn>y</ssn></kb>"
      "</ka></r>",
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?><r><ssn><![CDATA[a]]b]]></ssn><ssn>&#x41;</ssn></r>",
      "\xEF\xBB", "<r><ssn>ev:abc:def</ssn></r>",
  };
  (void)state;
  rw_check_reset(&evs__xml_rewriter, make, corpus, sizeof corpus / sizeof corpus[0], extra,
                 sizeof extra / sizeof extra[0], selsets, sizeof selsets / sizeof selsets[0]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_byte_exact),
      cmocka_unit_test(test_selection),
      cmocka_unit_test(test_values),
      cmocka_unit_test(test_deferred),
      cmocka_unit_test(test_rejections),
      cmocka_unit_test(test_accepted_edge_cases),
      cmocka_unit_test(test_mixed_content),
      cmocka_unit_test(test_ev_data),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_callback_errors_and_poison),
      cmocka_unit_test(test_bounded_memory),
      cmocka_unit_test(test_reset_is_new),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
