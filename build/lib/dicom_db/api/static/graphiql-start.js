// Starts GraphiQL (api/graphiql.py serves the page and the vendored builds it needs).
// The editor opens with the query the browser kept from its last visit, else the server's example query.
// Requests go to this page's own URL, /graphql. (A browser's GET /graphql?query=... is answered with JSON, not
// with this page: the API keeps that URL for scripts.)
(function () {
  'use strict';
  const example = JSON.parse(document.getElementById('default-query').textContent);
  const fetcher = GraphiQL.createFetcher({ url: window.location.pathname });
  const explorer = GraphiQLPluginExplorer.explorerPlugin();

  function App() {
    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      plugins: [explorer],
      defaultQuery: example,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
      inputValueDeprecation: true,
    });
  }

  ReactDOM.createRoot(document.getElementById('graphiql')).render(React.createElement(App));
})();
