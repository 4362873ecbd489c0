<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<!-- changedet: new structures, one colour per first-seen class (grouped months of first_seen_end).
     Unconfirmed structures (confirmed = false) get a dashed outline; structures that are not
     buildings (kind) are hatched instead of filled. Labels show the id.
     changedet writes a copy of this style per run with one category per first-seen class;
     the single category below is the fallback for structures whose first-seen date is unknown. -->
<qgis version="3.22.16-Białowieża" styleCategories="Symbology|Labeling|MapTips" labelsEnabled="1">
  <renderer-v2 type="categorizedSymbol" attr="''" forceraster="0" symbollevels="0" enableorderby="0" referencescale="-1">
    <categories>
      <category render="true" symbol="0" value="" label="first-seen date unknown" type="string"/>
    </categories>
    <symbols>
      <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
        <data_defined_properties>
          <Option type="Map">
            <Option name="name" type="QString" value=""/>
            <Option name="properties"/>
            <Option name="type" type="QString" value="collection"/>
          </Option>
        </data_defined_properties>
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="border_width_map_unit_scale" v="3x:0,0,0,0,0,0"/>
          <prop k="color" v="150,150,150,70"/>
          <prop k="joinstyle" v="miter"/>
          <prop k="offset" v="0,0"/>
          <prop k="offset_map_unit_scale" v="3x:0,0,0,0,0,0"/>
          <prop k="offset_unit" v="MM"/>
          <prop k="outline_color" v="150,150,150,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.7"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="solid"/>
          <data_defined_properties>
            <Option type="Map">
              <Option name="name" type="QString" value=""/>
              <Option name="properties" type="Map">
                <Option name="fillStyle" type="Map">
                  <Option name="active" type="bool" value="true"/>
                  <Option name="expression" type="QString" value="CASE WHEN &quot;kind&quot; = 'building' THEN 'solid' WHEN &quot;kind&quot; = 'ground works' THEN 'b_diagonal' ELSE 'dense6' END"/>
                  <Option name="type" type="int" value="3"/>
                </Option>
                <Option name="outlineStyle" type="Map">
                  <Option name="active" type="bool" value="true"/>
                  <Option name="expression" type="QString" value="CASE WHEN &quot;confirmed&quot; THEN 'solid' ELSE 'dash' END"/>
                  <Option name="type" type="int" value="3"/>
                </Option>
              </Option>
              <Option name="type" type="QString" value="collection"/>
            </Option>
          </data_defined_properties>
        </layer>
      </symbol>
    </symbols>
    <rotation/>
    <sizescale/>
  </renderer-v2>
  <labeling type="simple">
    <settings calloutType="simple">
      <text-style fieldName="id" isExpression="0" fontFamily="Sans Serif" namedStyle="Regular" fontSize="7" fontSizeUnit="Point" fontWeight="50" fontItalic="0" textColor="255,255,255,255" textOpacity="1" multilineHeight="1" blendMode="0" allowHtml="0" capitalization="0" fontKerning="1" textOrientation="horizontal" previewBkgrdColor="255,255,255,255">
        <text-buffer bufferDraw="1" bufferSize="0.7" bufferSizeUnits="MM" bufferColor="0,0,0,255" bufferOpacity="0.85" bufferJoinStyle="128" bufferNoFill="1" bufferBlendMode="0"/>
        <background shapeDraw="0"/>
        <shadow shadowDraw="0"/>
      </text-style>
      <text-format multilineAlign="3" wrapChar="" autoWrapLength="0" formatNumbers="0" decimals="3" plussign="0" addDirectionSymbol="0"/>
      <placement placement="0" dist="1" distUnits="MM" priority="5" quadOffset="4" xOffset="0" yOffset="0" offsetType="0" offsetUnits="MM" rotationAngle="0" centroidWhole="0" centroidInside="0" fitInPolygonOnly="0" polygonPlacementFlags="2" placementFlags="10" layerType="PolygonGeometry"/>
      <rendering drawLabels="1" obstacle="1" obstacleType="1" obstacleFactor="1" scaleVisibility="0" scaleMin="0" scaleMax="0" upsidedownLabels="0" displayAll="0" labelPerPart="0" mergeLines="0" limitNumLabels="0" maxNumLabels="2000" minFeatureSize="0" fontLimitPixelSize="0" fontMinPixelSize="3" fontMaxPixelSize="10000" zIndex="0" unplacedVisibility="0"/>
    </settings>
  </labeling>
  <mapTip>[% "id" %] ([% "kind" %]): first seen [% "first_seen_start" %] to [% "first_seen_end" %], [% round("area_m2") %] m², confidence [% "confidence" %][% CASE WHEN "confirmed" THEN '' ELSE ' (unconfirmed)' END %]; [% "lat" %], [% "lon" %]</mapTip>
  <previewExpression>"id"</previewExpression>
  <layerGeometryType>2</layerGeometryType>
</qgis>
