// Sign-in shared by the lorapipe pages, for a server started with --api-auth (HTTP Basic, as A1111's).
// The pages never rely on the browser's Basic-auth dialog: every fetch says it comes from a page (X-Requested-With),
// so a 401 comes back without a Basic challenge, and the page shows its own small form instead. The credentials
// live in sessionStorage (this tab, until it closes) and travel only in the Authorization header, never in a URL.
"use strict";
const lorapipeAuth = (() => {
  const KEY = "lorapipe.auth";
  let credentials = sessionStorage.getItem(KEY);  // "Basic <base64 of user:password>", or null
  let lastUser = "";  // kept for the form's next showing (after a wrong password); the password never is
  let signingIn = null;  // the form's promise while it is shown: every refused request waits for the same one

  function withAuth(headers) {
    const all = new Headers(headers || {});
    all.set("X-Requested-With", "XMLHttpRequest");
    if (credentials) all.set("Authorization", credentials);
    return all;
  }

  // fetch() that signs in when the server asks: on a 401 the form is shown, then the request is sent again.
  async function authFetch(path, options = {}) {
    for (;;) {
      const response = await fetch(path, { ...options, headers: withAuth(options.headers) });
      if (response.status !== 401) return response;
      const body = await response.json().catch(() => null);
      const refused = credentials ? (body && body.detail) || "Incorrect username or password" : "";
      await signIn(refused);
    }
  }

  function signIn(message) {
    if (!signingIn) {
      signingIn = showForm(message).finally(() => { signingIn = null; });
    }
    return signingIn;
  }

  function showForm(message) {
    return new Promise((resolve) => {
      const dialog = document.createElement("dialog");
      dialog.id = "sign-in";
      dialog.innerHTML = `<form method="dialog">
        <h2>Sign in</h2>
        <p class="muted">This lorapipe server asks for the user name and password it was started with
          (<code>--api-auth</code>).</p>
        <label>User <input name="user" autocomplete="username" required></label>
        <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
        <p class="error" role="alert"></p>
        <button type="submit">Sign in</button></form>`;
      dialog.querySelector(".error").textContent = message || "";  // text, never HTML
      dialog.querySelector("input[name=user]").value = lastUser;
      dialog.addEventListener("cancel", (event) => event.preventDefault());  // nothing works without it
      dialog.querySelector("form").addEventListener("submit", (event) => {
        event.preventDefault();
        const form = event.target;
        lastUser = form.user.value;
        const pair = new TextEncoder().encode(`${form.user.value}:${form.password.value}`);
        credentials = `Basic ${btoa(String.fromCharCode(...pair))}`;
        sessionStorage.setItem(KEY, credentials);
        dialog.close();
        dialog.remove();
        resolve();
      });
      document.body.append(dialog);
      dialog.showModal();
      dialog.querySelector(lastUser ? "input[name=password]" : "input[name=user]").focus();
    });
  }

  // An <img> of a guarded route: an <img src> cannot carry the header, so the image is fetched and shown as a blob.
  function showImage(img, url) {
    if (!credentials) {  // an open server (a guarded one has asked for sign-in before any image is listed)
      img.src = url;
      return;
    }
    authFetch(url).then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`${r.status}`)))).then((blob) => {
      img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
      img.src = URL.createObjectURL(blob);
    }).catch(() => { img.alt = `${img.alt} (could not load)`; });
  }

  // A download link of a guarded route: plain when the server is open, fetched with the header when signed in.
  function downloadLink(anchor, url, filename) {
    anchor.href = url;
    anchor.download = filename;
    anchor.addEventListener("click", async (event) => {
      if (!credentials) return;
      event.preventDefault();
      const response = await authFetch(url);
      if (!response.ok) return;
      const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(await response.blob()),
        download: filename });
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    });
  }

  return { fetch: authFetch, showImage, downloadLink };
})();
