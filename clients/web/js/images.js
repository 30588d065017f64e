// Camera images come from the daemon's HTTP endpoints, which want the token in an
// Authorization header when the daemon has one; an <img src> cannot send that header, so images
// are fetched with it and shown through object URLs (revoked when replaced).

export class Images {
  constructor(tokens) {
    this.tokens = tokens;
  }

  /** Fetch ``url`` (same origin) into ``img``; resolves with the response headers. */
  async load(img, url) {
    const token = this.tokens.get();
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(url, { headers, cache: "no-store" });
    if (!response.ok) throw new Error(`${url.split("?")[0]}: HTTP ${response.status}`);
    const blob = await response.blob();
    const objectUrl = URL.createObjectURL(blob);
    try {
      await new Promise((resolve, reject) => {
        img.addEventListener("load", resolve, { once: true });
        img.addEventListener("error", () => reject(new Error("not an image")), { once: true });
        img.src = objectUrl;
      });
    } catch (error) {
      URL.revokeObjectURL(objectUrl);
      throw error;
    }
    const previous = img.dataset.objectUrl;
    if (previous) URL.revokeObjectURL(previous);
    img.dataset.objectUrl = objectUrl;
    return response.headers;
  }
}
