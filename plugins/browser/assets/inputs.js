/*
 * inputs.js: the Inputs iframe (plugins/browser/README.md). Card number (brand, Luhn), expiry
 * and CVC (hideable) with live validation; every change is encrypted here, in the iframe, with
 * the app's P-256 key, and posted to the embedding page only, as
 *   {card: {type, number, cvc, expMonth, expYear}, isValid, isPotentiallyValid, isEmpty, error}
 * where number and cvc are ev: strings (null until the field is valid). The page's origin is
 * the `origin` query parameter, which evserver checked against the app's allowed origins
 * before serving this page (its Content-Security-Policy frame-ancestors names the same list,
 * so the browser refuses to show it anywhere else); messages go to that origin only, and
 * messages are accepted from the parent window at that origin only. Plaintext never leaves.
 */
(function () {
  'use strict';
  var params = new URLSearchParams(location.search);
  var APP = params.get('app') || '';
  var ORIGIN = params.get('origin') || '';
  var parentWin = window.parent;
  if (parentWin === window || !/^https?:\/\/[^/]+$/.test(ORIGIN)) return; // not embedded: inert

  var BRANDS = [
    {type: 'american_express', re: /^3[47]/, lengths: [15], cvc: 4, gaps: [4, 10]},
    {type: 'diners_club', re: /^(36|38|30[0-5])/, lengths: [14, 16, 19], cvc: 3, gaps: [4, 10]},
    {type: 'discover', re: /^(6011|65|64[4-9])/, lengths: [16, 19], cvc: 3, gaps: [4, 8, 12]},
    {type: 'jcb', re: /^35(2[89]|[3-8])/, lengths: [16, 17, 18, 19], cvc: 3, gaps: [4, 8, 12]},
    {type: 'unionpay', re: /^62/, lengths: [16, 17, 18, 19], cvc: 3, gaps: [4, 8, 12]},
    {type: 'maestro', re: /^(5018|5020|5038|5893|6304|6759|676[1-3])/, lengths: [12, 13, 14, 15, 16, 17, 18, 19], cvc: 3, gaps: [4, 8, 12]},
    {type: 'mastercard', re: /^(5[1-5]|222[1-9]|22[3-9]|2[3-6]|27[01]|2720)/, lengths: [16], cvc: 3, gaps: [4, 8, 12]},
    {type: 'visa', re: /^4/, lengths: [13, 16, 19], cvc: 3, gaps: [4, 8, 12]}
  ];
  // Prefixes that may still become a brand (a user typing "2" may be typing a Mastercard).
  var PARTIAL = /^(2|22|27|3|30|35|5|6|60|601|64|67|676|50|501|502|503|589|63|630)$/;
  var LABELS = {
    cardNumberLabel: 'Card number', expirationDateLabel: 'Expiration date',
    securityCodeLabel: 'Security code', expirationDatePlaceholder: 'MM/YY',
    invalidCardNumberLabel: 'The credit card number you entered was invalid',
    invalidExpirationDateLabel: 'The expiration date you entered was invalid',
    invalidSecurityCodeLabel: 'The security code you entered was invalid'
  };
  var STYLE_VARS = {
    primaryColor: '--ev-primary', labelColor: '--ev-label-color', inputTextColor: '--ev-input-color',
    placeholderColor: '--ev-placeholder-color', inputBorderColor: '--ev-border-color',
    inputBackgroundColor: '--ev-input-bg', inputBorderRadius: '--ev-radius',
    inputHeight: '--ev-input-height', fontFamily: '--ev-font-family', inputFontSize: '--ev-input-font-size',
    inputBoxShadow: '--ev-input-shadow', labelFontSize: '--ev-label-font-size', labelWeight: '--ev-label-weight'
  };
  var $ = function (id) { return document.getElementById(id); };
  var number = $('number'), expiry = $('expiry'), cvc = $('cvc'), errorEl = $('error'), brandEl = $('brand');
  var cvcDisabled = false;
  var labels = Object.assign({}, LABELS);
  var keys = null, seq = 0, touched = {number: false, expiry: false, cvc: false};

  function post(m) { parentWin.postMessage(m, ORIGIN); }
  function digits(s) { return s.replace(/\D/g, ''); }
  function brandOf(d) {
    for (var i = 0; i < BRANDS.length; i++) if (BRANDS[i].re.test(d)) return BRANDS[i];
    return null;
  }
  function luhn(d) {
    var sum = 0, dbl = false;
    for (var i = d.length - 1; i >= 0; i--) {
      var n = d.charCodeAt(i) - 48;
      if (dbl) { n *= 2; if (n > 9) n -= 9; }
      sum += n;
      dbl = !dbl;
    }
    return d.length > 0 && sum % 10 === 0;
  }
  function formatNumber(d, b) {
    var gaps = b ? b.gaps : [4, 8, 12], out = '';
    for (var i = 0; i < d.length; i++) {
      if (gaps.indexOf(i) >= 0) out += ' ';
      out += d[i];
    }
    return out;
  }
  function numberState(d) {
    var b = brandOf(d), max = b ? Math.max.apply(null, b.lengths) : 19;
    if (!d) return {b: b, valid: false, potential: true};
    var valid = !!b && b.lengths.indexOf(d.length) >= 0 && luhn(d);
    var potential = valid || ((!!b || PARTIAL.test(d)) && d.length < max && !(b && d.length >= Math.min.apply(null, b.lengths) && d.length === max));
    return {b: b, valid: valid, potential: potential};
  }
  function expiryState(s) {
    var d = digits(s);
    if (!d) return {valid: false, potential: true, m: '', y: ''};
    var m = d.slice(0, 2), y = d.slice(2, 4);
    var mPot = d.length === 1 ? /^[01]$/.test(d) : /^(0[1-9]|1[0-2])$/.test(m);
    if (d.length < 4) return {valid: false, potential: mPot && d.length <= 4, m: m, y: y};
    var now = new Date(), cy = now.getFullYear() % 100, cm = now.getMonth() + 1, yy = parseInt(y, 10), mm = parseInt(m, 10);
    var valid = mPot && (yy > cy || (yy === cy && mm >= cm)) && yy <= cy + 20 && d.length === 4;
    return {valid: valid, potential: valid, m: m, y: y};
  }
  function cvcState(d, b) {
    var len = b ? b.cvc : 3;
    if (!d) return {valid: false, potential: true};
    return {valid: d.length === len || (!b && (d.length === 3 || d.length === 4)), potential: d.length <= (b ? len : 4)};
  }

  async function emit() {
    var my = ++seq;
    var nd = digits(number.value), cd = digits(cvc.value);
    var ns = numberState(nd), es = expiryState(expiry.value), cs = cvcState(cd, ns.b);
    brandEl.textContent = ns.b ? ns.b.type.replace('_', ' ') : '';
    number.classList.toggle('invalid', !ns.potential || (touched.number && !ns.valid && !!nd));
    expiry.classList.toggle('invalid', !es.potential || (touched.expiry && !es.valid && !!digits(expiry.value)));
    cvc.classList.toggle('invalid', !cvcDisabled && (!cs.potential || (touched.cvc && !cs.valid && !!cd)));
    var error;
    if (!ns.potential || (touched.number && nd && !ns.valid)) error = {type: 'invalid_pan', message: labels.invalidCardNumberLabel};
    else if (!es.potential || (touched.expiry && digits(expiry.value) && !es.valid)) error = {type: 'invalid_expiry', message: labels.invalidExpirationDateLabel};
    else if (!cvcDisabled && (!cs.potential || (touched.cvc && cd && !cs.valid))) error = {type: 'invalid_cvc', message: labels.invalidSecurityCodeLabel};
    errorEl.textContent = error ? error.message : '';
    var isValid = ns.valid && es.valid && (cvcDisabled || cs.valid);
    var isPotentiallyValid = ns.potential && es.potential && (cvcDisabled || cs.potential);
    var isEmpty = !nd && !digits(expiry.value) && (cvcDisabled || !cd);
    var card = {type: ns.b ? ns.b.type : null, number: null, cvc: null, expMonth: es.m || null, expYear: es.y || null};
    try {
      if (ns.valid) card.number = await (await keys).encryptText(nd, null);
      if (!cvcDisabled && cs.valid) card.cvc = await (await keys).encryptText(cd, null);
    } catch (e) {
      error = {type: 'encryption_failed', message: 'The card details could not be encrypted'};
      isValid = false;
      card.number = card.cvc = null;
    }
    if (my !== seq) return; // a later change already answered
    var payload = {card: card, isValid: isValid, isPotentiallyValid: isPotentiallyValid, isEmpty: isEmpty};
    if (error) payload.error = error;
    post({type: 'ev-inputs-change', payload: payload});
  }

  function onNumber() {
    var d = digits(number.value).slice(0, 19);
    var b = brandOf(d);
    number.value = formatNumber(d, b);
    emit();
  }
  function onExpiry(e) {
    var d = digits(expiry.value).slice(0, 4);
    if (d.length === 1 && d > '1') d = '0' + d;
    var deleting = e && e.inputType && e.inputType.indexOf('delete') === 0;
    expiry.value = d.length > 2 || (d.length === 2 && !deleting) ? d.slice(0, 2) + '/' + d.slice(2) : d;
    emit();
  }
  function onCvc() {
    var b = brandOf(digits(number.value));
    cvc.value = digits(cvc.value).slice(0, b ? b.cvc : 4);
    emit();
  }
  number.addEventListener('input', onNumber);
  expiry.addEventListener('input', onExpiry);
  cvc.addEventListener('input', onCvc);
  [['number', number], ['expiry', expiry], ['cvc', cvc]].forEach(function (p) {
    p[1].addEventListener('blur', function () { touched[p[0]] = true; emit(); });
  });

  function applyLabels(l) {
    Object.keys(LABELS).forEach(function (k) { if (typeof l[k] === 'string') labels[k] = l[k]; });
    $('number-label').textContent = labels.cardNumberLabel;
    $('expiry-label').textContent = labels.expirationDateLabel;
    $('cvc-label').textContent = labels.securityCodeLabel;
    expiry.placeholder = labels.expirationDatePlaceholder;
    if (errorEl.textContent) emit();
    sendHeight();
  }
  function applyConfig(c) {
    var theme = ['default', 'minimal', 'material'].indexOf(c.theme) >= 0 ? c.theme : 'default';
    document.body.className = 'theme-' + theme;
    Object.keys(STYLE_VARS).forEach(function (k) {
      if (typeof c[k] === 'string' && c[k].length < 200 && !/[;{}<>]/.test(c[k]))
        document.documentElement.style.setProperty(STYLE_VARS[k], c[k]);
    });
    if (typeof c.fontUrl === 'string' && /^https:\/\/fonts\.googleapis\.com\//.test(c.fontUrl)) {
      var link = document.createElement('link');
      link.rel = 'stylesheet';
      link.href = c.fontUrl;
      document.head.appendChild(link);
    }
    cvcDisabled = c.disableCVV === true || c.disableCVV === 'true';
    $('cvc-field').classList.toggle('hidden', cvcDisabled);
    applyLabels(c);
  }
  function sendHeight() {
    post({type: 'ev-inputs-height', height: Math.ceil(document.documentElement.scrollHeight)});
  }

  window.addEventListener('message', function (e) {
    if (e.source !== parentWin || e.origin !== ORIGIN) return;
    var m = e.data || {};
    if (m.type === 'ev-inputs-config' && m.config && typeof m.config === 'object') {
      applyConfig(m.config);
      emit();
    } else if (m.type === 'ev-inputs-labels' && m.labels && typeof m.labels === 'object') {
      applyLabels(m.labels);
    }
  });

  keys = fetch('/public-keys/' + encodeURIComponent(APP), {credentials: 'omit'})
    .then(function (r) { if (!r.ok) throw new Error('public key ' + r.status); return r.json(); })
    .then(function (j) { return new window.Evervault._Keys(window.Evervault._unb64(j.ecdhP256Key)); });
  keys.catch(function () {});
  keys.then(function (k) { return k.current(); }).catch(function () {}).then(function () {
    post({type: 'ev-inputs-ready'});
    sendHeight();
  });
})();
