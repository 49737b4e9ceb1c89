/*
 * evervault.js: evserver's browser SDK (plugins/browser/README.md). Served by evserver at
 * /browser/<version>/evervault.js; the page includes it with one <script> tag and calls
 *
 *   const ev = new Evervault('<TEAM_ID>', '<APP_ID>');
 *   await ev.encrypt(value);          // strings, numbers, booleans, objects, arrays, File/Blob
 *   await ev.decrypt(token, data);    // with a client-side token (POST /client-side-tokens)
 *   const inputs = ev.inputs('#card', config);   // the card-collection iframe
 *
 * Encryption uses WebCrypto only, with the app's P-256 public key (GET /public-keys/<appId>):
 * the same bytes the Node SDK makes with curve prime256v1 and no data role (PROTOCOL.md §3, §4):
 * `ev:Tk9D[:type]:<iv>:<ephemeral key, compressed>:<ciphertext||tag>:$`, AES-256-GCM with the
 * app key as AAD, the key from SHA-256(Z || 00000001 || explicit-parameter SPKI of the ephemeral
 * key). Files become %EVENC version 3. Nothing secret is in the page: only the public key.
 */
(function (global) {
  'use strict';
  var VERSION = '__EVS_VERSION__';
  var script = typeof document !== 'undefined' ? document.currentScript : null;
  var SCRIPT_ORIGIN = script && script.src ? new URL(script.src).origin : '';

  // ---- bytes ----------------------------------------------------------------------------------
  function b64(bytes) {
    var s = '';
    for (var i = 0; i < bytes.length; i += 0x8000)
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s).replace(/=+$/, '');
  }
  function unb64(s) {
    var bin = atob(s + '==='.slice((s.length + 3) % 4));
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function concat(list) {
    var n = 0, i, o = 0;
    for (i = 0; i < list.length; i++) n += list[i].length;
    var out = new Uint8Array(n);
    for (i = 0; i < list.length; i++) { out.set(list[i], o); o += list[i].length; }
    return out;
  }
  function hexBytes(h) {
    var out = new Uint8Array(h.length / 2);
    for (var i = 0; i < out.length; i++) out[i] = parseInt(h.substr(2 * i, 2), 16);
    return out;
  }
  function toBig(bytes) {
    var h = '0x';
    for (var i = 0; i < bytes.length; i++) h += (bytes[i] < 16 ? '0' : '') + bytes[i].toString(16);
    return BigInt(h);
  }
  function fromBig(n, len) {
    var h = n.toString(16);
    while (h.length < 2 * len) h = '0' + h;
    return hexBytes(h);
  }
  var CRC_TABLE = (function () {
    var t = new Uint32Array(256);
    for (var n = 0; n < 256; n++) {
      var c = n;
      for (var k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();
  function crc32(bytes) {
    var c = 0xffffffff;
    for (var i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  // ---- P-256 --------------------------------------------------------------------------------
  var P = BigInt('0xffffffff00000001000000000000000000000000ffffffffffffffffffffffff');
  var B = BigInt('0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b');
  // DER SubjectPublicKeyInfo of a P-256 key with explicit curve parameters, up to the point
  // (PROTOCOL.md §3.2: 270 bytes, ending 03 42 00; the point follows, 65 bytes uncompressed).
  var SPKI_PREFIX = hexBytes(
    '3082014b3082010306072a8648ce3d02013081f7020101302c06072a8648ce3d0101022100ffffffff000000' +
    '01000000000000000000000000ffffffffffffffffffffffff305b0420ffffffff000000010000000000000000' +
    '00000000fffffffffffffffffffffffc04205ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c' +
    '3e27d2604b031500c49d360886e704936a6678e1139d26b7819f7e900441046b17d1f2e12c4247f8bce6e563a4' +
    '40f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb640' +
    '6837bf51f5022100ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551020101034200');
  function modpow(b, e, m) {
    var r = BigInt(1);
    b %= m;
    while (e > BigInt(0)) {
      if (e & BigInt(1)) r = (r * b) % m;
      b = (b * b) % m;
      e >>= BigInt(1);
    }
    return r;
  }
  function decompress(c) {
    if (c.length === 65 && c[0] === 4) return c;
    if (c.length !== 33 || (c[0] !== 2 && c[0] !== 3)) throw new Error('not a P-256 public key');
    var x = toBig(c.subarray(1));
    var y2 = (((x * x) % P) * x - BigInt(3) * x + B) % P;
    if (y2 < 0) y2 += P;
    var y = modpow(y2, (P + BigInt(1)) / BigInt(4), P);
    if (Number(y & BigInt(1)) !== (c[0] & 1)) y = P - y;
    return concat([new Uint8Array([4]), c.subarray(1), fromBig(y, 32)]);
  }
  function compress(u) {
    return concat([new Uint8Array([2 | (u[64] & 1)]), u.subarray(1, 33)]);
  }

  var subtle = global.crypto && global.crypto.subtle;
  var EPHEMERAL_MS = 15000; // like the Node SDK: one ephemeral key per 15 s, fresh IV per value

  function Keys(appKey) {
    this.appKey = appKey; // 33 bytes, compressed, exactly as served (the AAD)
    this.eph = null;
  }
  Keys.prototype.current = function () {
    var self = this;
    if (self.eph && Date.now() - self.eph.at < EPHEMERAL_MS) return self.eph.ready;
    var at = Date.now();
    var ready = (async function () {
      var app = await subtle.importKey('raw', decompress(self.appKey), {name: 'ECDH', namedCurve: 'P-256'},
                                       false, []);
      var pair = await subtle.generateKey({name: 'ECDH', namedCurve: 'P-256'}, false, ['deriveBits']);
      var pub = new Uint8Array(await subtle.exportKey('raw', pair.publicKey));
      var z = new Uint8Array(await subtle.deriveBits({name: 'ECDH', public: app}, pair.privateKey, 256));
      var material = concat([z, new Uint8Array([0, 0, 0, 1]), SPKI_PREFIX, pub]);
      z.fill(0);
      var digest = new Uint8Array(await subtle.digest('SHA-256', material));
      material.fill(0);
      var key = await subtle.importKey('raw', digest, {name: 'AES-GCM'}, false, ['encrypt']);
      digest.fill(0);
      return {key: key, pub: compress(pub)};
    })();
    self.eph = {at: at, ready: ready};
    ready.catch(function () { if (self.eph && self.eph.ready === ready) self.eph = null; });
    return ready;
  };
  Keys.prototype.seal = async function (plain) {
    var k = await this.current();
    var iv = global.crypto.getRandomValues(new Uint8Array(12));
    var ct = new Uint8Array(await subtle.encrypt({name: 'AES-GCM', iv: iv, additionalData: this.appKey,
                                                  tagLength: 128}, k.key, plain));
    return {iv: iv, pub: k.pub, ct: ct};
  };
  Keys.prototype.encryptText = async function (text, type) {
    var s = await this.seal(new TextEncoder().encode(text));
    return 'ev:Tk9D:' + (type ? type + ':' : '') + b64(s.iv) + ':' + b64(s.pub) + ':' + b64(s.ct) + ':$';
  };
  Keys.prototype.encryptBytes = async function (bytes) {
    var s = await this.seal(bytes);
    var head = concat([new Uint8Array([0x25, 0x45, 0x56, 0x45, 0x4e, 0x43, 3, 55, 0]), s.pub, s.iv,
                       new Uint8Array([0])]);
    var body = concat([head, s.ct]);
    var c = crc32(body);
    return concat([body, new Uint8Array([c & 255, (c >>> 8) & 255, (c >>> 16) & 255, c >>> 24])]);
  };
  Keys.prototype.encryptValue = async function (v) {
    var self = this;
    if (v === null) return null;
    if (typeof v === 'string') return self.encryptText(v.trim(), null);
    if (typeof v === 'number') return self.encryptText(JSON.stringify(v), 'number');
    if (typeof v === 'boolean') return self.encryptText(v ? 'true' : 'false', 'boolean');
    if (typeof Blob !== 'undefined' && v instanceof Blob) {
      var out = await self.encryptBytes(new Uint8Array(await v.arrayBuffer()));
      if (typeof File !== 'undefined' && v instanceof File)
        return new File([out], v.name, {type: 'application/octet-stream'});
      return new Blob([out], {type: 'application/octet-stream'});
    }
    if (v instanceof Date) return {};
    if (Array.isArray(v)) return Promise.all(v.map(function (e) { return self.encryptValue(e); }));
    if (typeof v === 'object') {
      var keys = Object.keys(v), vals = await Promise.all(keys.map(function (k) { return self.encryptValue(v[k]); }));
      var o = {};
      keys.forEach(function (k, i) { o[k] = vals[i]; });
      return o;
    }
    return v; // bigints, functions...: passed through, as the Node SDK does
  };

  // ---- the client -----------------------------------------------------------------------------
  // teamId: evserver has no teams; any non-empty string is accepted and ignored (README). appId
  // names the evserver app. options.url: the evserver API origin (default: where this script
  // was loaded from).
  function Evervault(teamId, appId, options) {
    if (!(this instanceof Evervault)) throw new TypeError('use new Evervault(teamId, appId)');
    if (typeof teamId !== 'string' || !teamId) throw new Error('a team id is required');
    if (typeof appId !== 'string' || !/^app_[0-9a-f]{12}$/.test(appId)) throw new Error('an app id (app_...) is required');
    options = options || {};
    this.teamId = teamId;
    this.appId = appId;
    this.url = (options.url || SCRIPT_ORIGIN || global.location.origin).replace(/\/+$/, '');
    this._keys = null;
  }
  Evervault.version = VERSION;
  Evervault.prototype._loadKeys = function () {
    var self = this;
    if (!self._keys) {
      self._keys = fetch(self.url + '/public-keys/' + self.appId, {credentials: 'omit'})
        .then(function (r) {
          if (!r.ok) throw new Error('could not fetch the app\'s public key (' + r.status + ')');
          return r.json();
        })
        .then(function (j) { return new Keys(unb64(j.ecdhP256Key)); });
      self._keys.catch(function () { self._keys = null; });
    }
    return self._keys;
  };
  Evervault.prototype.encrypt = async function (value) {
    if (value === null || value === undefined) throw new Error('cannot encrypt null or undefined');
    var keys = await this._loadKeys();
    return keys.encryptValue(value);
  };
  Evervault.prototype.decrypt = async function (token, data) {
    var r = await fetch(this.url + '/decrypt', {
      method: 'POST', credentials: 'omit',
      headers: {'Authorization': 'Token ' + token, 'Content-Type': 'application/json'},
      body: JSON.stringify({data: data})
    });
    var j = await r.json().catch(function () { return {}; });
    if (!r.ok) {
      var e = new Error(j.detail || ('decrypt failed (' + r.status + ')'));
      e.status = r.status;
      e.code = j.code;
      throw e;
    }
    return j.data;
  };

  // ---- Inputs ---------------------------------------------------------------------------------
  function Inputs(ev, target, config) {
    var el = typeof target === 'string' ? document.querySelector(target) : target;
    if (!el) throw new Error('no element matches ' + target);
    var self = this;
    self._handlers = {};
    self._ready = false;
    self._queue = [];
    self.config = Object.assign({}, config || {});
    var src = ev.url + '/browser/' + VERSION + '/inputs.html?app=' + encodeURIComponent(ev.appId) +
      '&origin=' + encodeURIComponent(global.location.origin);
    var frame = document.createElement('iframe');
    frame.src = src;
    frame.title = 'Card details';
    frame.setAttribute('allow', 'clipboard-write');
    frame.style.border = '0';
    frame.style.width = '100%';
    frame.style.height = self.config.height || '95px';
    el.appendChild(frame);
    self.frame = frame;
    self._origin = new URL(ev.url).origin;
    self.isInputsLoaded = new Promise(function (resolve) { self._loaded = resolve; });
    self._listener = function (e) {
      if (e.source !== frame.contentWindow || e.origin !== self._origin) return;
      var m = e.data || {};
      if (m.type === 'ev-inputs-ready') {
        self._post({type: 'ev-inputs-config', config: self.config});
        self._ready = true;
        self._queue.splice(0).forEach(function (q) { self._post(q); });
        self._loaded(true);
        self._emit('ready', null);
      } else if (m.type === 'ev-inputs-change') {
        self._emit('change', m.payload);
      } else if (m.type === 'ev-inputs-height' && !self.config.height) {
        frame.style.height = m.height + 'px';
      }
    };
    global.addEventListener('message', self._listener);
  }
  Inputs.prototype._post = function (m) {
    if (!this._ready && m.type !== 'ev-inputs-config') { this._queue.push(m); return; }
    this.frame.contentWindow.postMessage(m, this._origin);
  };
  Inputs.prototype._emit = function (name, payload) {
    (this._handlers[name] || []).forEach(function (fn) { fn(payload); });
  };
  Inputs.prototype.on = function (name, fn) {
    (this._handlers[name] = this._handlers[name] || []).push(fn);
    return this;
  };
  Inputs.prototype.setLabels = function (labels) {
    Object.assign(this.config, labels || {});
    this._post({type: 'ev-inputs-labels', labels: labels || {}});
  };
  Inputs.prototype.destroy = function () {
    global.removeEventListener('message', this._listener);
    this.frame.remove();
  };
  Evervault.prototype.inputs = function (target, config) {
    return new Inputs(this, target, config);
  };

  // For the Inputs iframe, which shares this file: encrypt with a key already known.
  Evervault._Keys = Keys;
  Evervault._unb64 = unb64;
  // For tests against the Node SDK's vectors (tests/integration/sdk/browser.js).
  Evervault._p256 = {decompress: decompress, compress: compress, SPKI_PREFIX: SPKI_PREFIX, b64: b64};
  global.Evervault = Evervault;
})(typeof window !== 'undefined' ? window : globalThis);
