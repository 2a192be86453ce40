// Passkey ceremonies for Tollgate's pages. A form marked data-passkey="get" or
// "create" holds the server's WebAuthn options (JSON); "Use your passkey" runs the
// ceremony and posts the browser's answer in the form's `credential` field.
"use strict";
(function () {
  function toBytes(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    var binary = atob(base64 + "===".slice((base64.length + 3) % 4));
    return Uint8Array.from(binary, function (c) { return c.charCodeAt(0); });
  }
  function toText(buffer) {
    var bytes = new Uint8Array(buffer), binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function withIds(list) {
    return (list || []).map(function (item) {
      return Object.assign({}, item, { id: toBytes(item.id) });
    });
  }
  function answer(credential) {
    var response = credential.response, out = {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      extensions: credential.getClientExtensionResults(),
      response: { clientDataJSON: toText(response.clientDataJSON) }
    };
    if (response.attestationObject) {
      out.response.attestationObject = toText(response.attestationObject);
    } else {
      out.response.authenticatorData = toText(response.authenticatorData);
      out.response.signature = toText(response.signature);
      if (response.userHandle) out.response.userHandle = toText(response.userHandle);
    }
    return JSON.stringify(out);
  }
  function fail(form, message) {
    var alert = document.getElementById("passkey-error");
    if (!alert) {
      alert = document.createElement("p");
      alert.id = "passkey-error";
      alert.setAttribute("role", "alert");
      form.parentNode.insertBefore(alert, form);
    }
    alert.textContent = message;
  }
  function run(form) {
    if (!window.PublicKeyCredential) {
      fail(form, "This browser does not support passkeys.");
      return;
    }
    var options = JSON.parse(form.querySelector(".passkey-options").textContent).publicKey;
    options.challenge = toBytes(options.challenge);
    var ceremony;
    if (form.dataset.passkey === "create") {
      options.user = Object.assign({}, options.user, { id: toBytes(options.user.id) });
      options.excludeCredentials = withIds(options.excludeCredentials);
      ceremony = navigator.credentials.create({ publicKey: options });
    } else {
      options.allowCredentials = withIds(options.allowCredentials);
      ceremony = navigator.credentials.get({ publicKey: options });
    }
    ceremony.then(function (credential) {
      form.elements.credential.value = answer(credential);
      form.submit();
    }, function (error) {
      fail(form, error && error.name === "NotAllowedError"
        ? "The passkey request was cancelled or timed out. Try again."
        : "Your passkey could not be used: " + (error && error.message));
    });
  }
  document.querySelectorAll("form[data-passkey]").forEach(function (form) {
    var button = form.querySelector("#use-passkey");
    if (button) button.addEventListener("click", function () { run(form); });
  });
})();
