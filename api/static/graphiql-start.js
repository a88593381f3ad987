// Starts GraphiQL (api/graphiql.py serves the page and the vendored builds it needs).
// The editor opens with ?query=... when the URL has one, else the query the browser kept from its last visit,
// else the server's example query. Requests go to this page's own URL, /graphql.
(function () {
  'use strict';
  const example = JSON.parse(document.getElementById('default-query').textContent);
  const params = new URLSearchParams(window.location.search);
  const fetcher = GraphiQL.createFetcher({ url: window.location.pathname });
  const explorer = GraphiQLPluginExplorer.explorerPlugin();

  function App() {
    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      plugins: [explorer],
      defaultQuery: example,
      query: params.get('query') || undefined,
      variables: params.get('variables') || undefined,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
      inputValueDeprecation: true,
    });
  }

  ReactDOM.createRoot(document.getElementById('graphiql')).render(React.createElement(App));
})();
